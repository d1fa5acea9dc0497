"""Page-access traces recorded from a real model: where each decode step's attention goes.

A trace is what the decode GPU's pager needs to know and nothing more: for every decode step and
layer, the attention mass each 16-token block of the cache receives (float16, summed over heads,
normalised to 1 per layer). Row 0 is the prompt's last token (the prefill's own last query: what a
prefill node can ship with the KV to seed prediction); rows 1..N are greedy decode steps. Traces
are recorded on the CPU from the real models at long contexts and replayed elsewhere (the GPU
replay, the simulation), which is how the offload experiment runs where the weights cannot travel.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import OffloadError
from ..io import atomic_path

BLOCK = 16  # tokens per trace block; page sizes are multiples of it
TRACE_VERSION = 1
SHAPE_KEYS = ("layers", "hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab")


@dataclass
class AccessTrace:
    """``mass`` [rows, layers, blocks] float16: row t's attention over the cache's 16-token blocks."""

    model: str
    context: int  # prompt tokens: the cache that arrives from the prefill side
    mass: np.ndarray
    shape: dict = field(default_factory=dict)  # the model's sizes (SHAPE_KEYS) for compute of the same shape
    layer_types: list = field(default_factory=list)  # "full_attention" / "sliding_attention" per layer
    tokens: list = field(default_factory=list)  # each row's greedy token (row r's is row r+1's input)

    def __post_init__(self):
        if self.mass.ndim != 3:
            raise OffloadError(f"trace mass must be [rows, layers, blocks], got shape {list(self.mass.shape)}")
        rows, _, blocks = self.mass.shape
        if blocks * BLOCK < self.context + rows - 1:
            raise OffloadError(f"trace of {blocks} blocks cannot hold context {self.context} + {rows - 1} steps")
        if not np.isfinite(self.mass).all() or (self.mass < 0).any():
            raise OffloadError(f"trace {self.model}@{self.context}: attention mass has NaN/Inf or negative entries")

    @property
    def steps(self) -> int:
        """Decode steps (rows after the prompt's last token)."""
        return self.mass.shape[0] - 1

    @property
    def layers(self) -> int:
        return self.mass.shape[1]

    def prefix_pages(self, page_size: int) -> int:
        """Complete pages of the prompt: the pageable part (the partial page and new tokens stay on the GPU)."""
        _check_page_size(page_size)
        return self.context // page_size

    def page_mass(self, page_size: int) -> np.ndarray:
        """[rows, layers, prefix_pages] float32: mass per page of the prompt's complete pages."""
        per = page_size // BLOCK
        n = self.prefix_pages(page_size)
        m = self.mass[:, :, : n * per].astype(np.float32)
        return m.reshape(m.shape[0], m.shape[1], n, per).sum(axis=3)

    def tail_mass(self, page_size: int) -> np.ndarray:
        """[rows, layers] float32: mass on the partial last page and the new tokens (always on the GPU)."""
        n = self.prefix_pages(page_size) * (page_size // BLOCK)
        return self.mass[:, :, n:].astype(np.float32).sum(axis=2)

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(
                    fh, version=np.int64(TRACE_VERSION), model=np.str_(self.model), context=np.int64(self.context),
                    mass=self.mass.astype(np.float16), tokens=np.asarray(self.tokens, dtype=np.int64),
                    layer_types=np.asarray(self.layer_types, dtype=np.str_),
                    shape=np.asarray([self.shape[k] for k in SHAPE_KEYS], dtype=np.int64))

    @classmethod
    def load(cls, path: str | Path) -> "AccessTrace":
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["version"]) != TRACE_VERSION:
                    raise OffloadError(f"{path}: trace version {int(z['version'])}, this kvwire reads {TRACE_VERSION}")
                return cls(model=str(z["model"]), context=int(z["context"]), mass=z["mass"],
                           shape=dict(zip(SHAPE_KEYS, (int(x) for x in z["shape"]))),
                           layer_types=[str(x) for x in z["layer_types"]], tokens=[int(x) for x in z["tokens"]])
        except FileNotFoundError:
            raise OffloadError(f"trace file {str(path)!r} does not exist") from None
        except (KeyError, ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:  # truncated, member missing
            raise OffloadError(f"{path}: not a readable access trace ({exc})") from None


def _check_page_size(page_size: int) -> None:
    if page_size < BLOCK or page_size % BLOCK:
        raise OffloadError(f"page_size must be a positive multiple of {BLOCK}, got {page_size}")


def model_shape(model) -> dict:
    """The sizes the same-shape compute needs, from a loaded model's config."""
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    heads = cfg.num_attention_heads
    return {"layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "intermediate": cfg.intermediate_size,
            "heads": heads, "kv_heads": getattr(cfg, "num_key_value_heads", None) or heads,
            "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // heads, "vocab": cfg.vocab_size}


def max_context(model, decode_tokens: int) -> int:
    """The longest prompt whose decode of ``decode_tokens`` stays inside the model's positions."""
    cfg = getattr(model.config, "text_config", None) or model.config
    return int(cfg.max_position_embeddings) - decode_tokens


@torch.inference_mode()
def record_trace(model, name: str, prompt_ids: torch.Tensor, decode_tokens: int, *, chunk: int = 2048,
                 progress: Callable[[str], None] | None = None) -> AccessTrace:
    """Prefill ``prompt_ids`` [T] in chunks (no statistics: bounded memory at 32k), then run the last
    prompt token and ``decode_tokens`` greedy steps one query at a time through the model's own
    attention with kvwire's statistics wrapper (the forward is unchanged), keeping each step's
    attention per 16-token block."""
    from transformers import DynamicCache

    from ..kv import _attention_stats

    if prompt_ids.ndim != 1 or prompt_ids.numel() < 2:
        raise OffloadError(f"record_trace takes a 1-D prompt of >= 2 tokens, got shape {list(prompt_ids.shape)}")
    if decode_tokens < 1:
        raise OffloadError(f"decode_tokens must be >= 1, got {decode_tokens}")
    T = int(prompt_ids.numel())
    limit = max_context(model, decode_tokens)
    if T > limit:
        raise OffloadError(f"{name}: context {T} + {decode_tokens} decode tokens exceeds the model's positions")
    device = next(model.parameters()).device
    ids = prompt_ids.to(device).view(1, -1)
    cache = DynamicCache()  # no config: sliding layers keep every token (positions stay exact)
    for start in range(0, T - 1, chunk):
        model(input_ids=ids[:, start:min(T - 1, start + chunk)], past_key_values=cache, use_cache=True, logits_to_keep=1)
        if progress:
            progress(f"{name}: prefill {min(T - 1, start + chunk)}/{T - 1}")
    shape = model_shape(model)
    L = shape["layers"]
    blocks = -(-(T + decode_tokens) // BLOCK)
    mass = np.zeros((decode_tokens + 1, L, blocks), dtype=np.float32)
    token = ids[:, T - 1:]
    tokens = []
    for row in range(decode_tokens + 1):
        collected: dict = {}
        with _attention_stats(model, collected, 1, sums=False):
            out = model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
        if sorted(collected) != list(range(L)):
            raise OffloadError(f"{name}: attention came back for layers {sorted(collected)}, expected 0..{L - 1}")
        for layer in range(L):
            probs = collected[layer]["obs_attn"][0, :, 0].sum(dim=0).double()  # [K], over every query head
            probs = probs / probs.sum()
            k = probs.numel()
            padded = torch.zeros(-(-k // BLOCK) * BLOCK, dtype=torch.float64)
            padded[:k] = probs
            mass[row, layer, : padded.numel() // BLOCK] = padded.view(-1, BLOCK).sum(dim=1).numpy()
        token = out.logits[:, -1:].argmax(dim=-1)  # row 0's is the prefill's first token
        tokens.append(int(token))
        if progress and row % 8 == 0:
            progress(f"{name}: decode step {row}/{decode_tokens}")
    cfg = getattr(model.config, "text_config", None) or model.config
    layer_types = list(getattr(cfg, "layer_types", None) or ["full_attention"] * L)
    return AccessTrace(model=name, context=T, mass=mass.astype(np.float16), shape=shape,
                       layer_types=layer_types, tokens=tokens)
