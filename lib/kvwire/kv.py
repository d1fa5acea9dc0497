"""KV caches on disk and in the model: extract by prefill, inject into a transformers Cache.

A KV file (safetensors) holds one prompt's prefix cache:

- ``layer.{i}.k`` / ``layer.{i}.v``: [kv_heads, seq, head_dim] in the model's dtype, exactly
  as the attention layers produced them (post-RoPE keys); ``layer.{i}.positions`` (int64)
  only when a codec kept a subset of tokens;
- ``positions`` (int64 [seq]: 0..P-1, the prefix's token positions), ``prefix_ids`` (int64 [P]),
  ``continuation_ids`` (int64 [T])
  and ``first_token`` (int64 [1]: the prefill's greedy next token, computed on the prefill
  side before the cache crosses the wire);
- metadata: format tag, model name/source, dataset, prompt id, dtype, layer types.

Prefill uses ``DynamicCache()`` *without* a config so sliding-window layers (Gemma 3) keep
every token; injection rebuilds ``DynamicCache(ddp_cache_data=...)`` the same way. The
other route (a config-built cache whose sliding layers keep ``window - 1`` tokens) silently
shifts positions when rebuilt -- see ``tests/test_kv.py`` for the round trip that guards this.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .codecs import LayerKV
from .errors import KVError
from .io import atomic_path

FORMAT = "kvwire-kv/1"


@dataclass
class KVRecord:
    """One prompt's prefix cache plus what the quality stage needs to score it.

    A record extracted from a model has ``prefix_ids``, ``continuation_ids`` and ``first_token``;
    a record decoded from wire bytes (``kvwire decode``) has only the layers and metadata.
    """

    layers: list[LayerKV]
    prefix_ids: torch.Tensor | None = None
    continuation_ids: torch.Tensor | None = None
    first_token: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def seq_len(self) -> int:
        """Length of the original prefix (the position the next token takes)."""
        if self.prefix_ids is not None:
            return int(self.prefix_ids.numel())
        return int(self.meta.get("prefix_len", self.layers[0].k.shape[1]))

    @property
    def raw_bytes(self) -> int:
        return sum(layer.raw_bytes for layer in self.layers)

    def require_scoring_inputs(self, where: str) -> None:
        if self.prefix_ids is None or self.continuation_ids is None or self.first_token is None:
            raise KVError(f"{where}: KV file lacks prefix_ids/continuation_ids/first_token (not an extracted prefix)")


def save_kv(path: str | Path, record: KVRecord) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(record.layers):
        tensors[f"layer.{i}.k"] = layer.k.contiguous()
        tensors[f"layer.{i}.v"] = layer.v.contiguous()
        if layer.positions is not None:
            tensors[f"layer.{i}.positions"] = layer.positions.to(torch.int64).contiguous()
    # token positions of the stored prefix (the RoPE slots its keys were computed at)
    tensors["positions"] = torch.arange(record.seq_len, dtype=torch.int64)
    if record.prefix_ids is not None:
        tensors["prefix_ids"] = record.prefix_ids.to(torch.int64).contiguous()
    if record.continuation_ids is not None:
        tensors["continuation_ids"] = record.continuation_ids.to(torch.int64).contiguous()
    if record.first_token is not None:
        tensors["first_token"] = torch.tensor([record.first_token], dtype=torch.int64)
    meta = {"format": FORMAT, "n_layers": str(len(record.layers)),
            "dtype": str(record.layers[0].k.dtype).removeprefix("torch."),
            "meta": json.dumps(record.meta, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_kv(path: str | Path, *, check_finite: bool = True) -> KVRecord:
    path = Path(path)
    if not path.exists():
        raise KVError(f"KV file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != FORMAT:
                raise KVError(f"{path}: not a kvwire KV file (format {meta.get('format')!r}, expected {FORMAT!r})")
            n_layers = int(meta["n_layers"])
            keys = set(fh.keys())
            missing = [k for i in range(n_layers) for k in (f"layer.{i}.k", f"layer.{i}.v") if k not in keys]
            if missing:
                raise KVError(f"{path}: missing tensors {missing[:6]}{'...' if len(missing) > 6 else ''}")

            def optional(key):
                return fh.get_tensor(key) if key in keys else None

            layers = [LayerKV(fh.get_tensor(f"layer.{i}.k"), fh.get_tensor(f"layer.{i}.v"),
                              optional(f"layer.{i}.positions")) for i in range(n_layers)]
            first = optional("first_token")
            positions = optional("positions")
            record = KVRecord(layers=layers, prefix_ids=optional("prefix_ids"),
                              continuation_ids=optional("continuation_ids"),
                              first_token=None if first is None else int(first[0]),
                              meta=json.loads(meta.get("meta", "{}")))
    except KVError:
        raise
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise KVError(f"{path}: unreadable KV file ({exc})") from exc
    validate_layers(record.layers, str(path), check_finite=check_finite)
    if positions is not None and positions.numel() != record.seq_len:
        raise KVError(f"{path}: {positions.numel()} positions for a {record.seq_len}-token prefix")
    return record


def validate_layers(layers: Sequence[LayerKV], where: str, *, check_finite: bool = True) -> None:
    if not layers:
        raise KVError(f"{where}: no layers")
    for i, layer in enumerate(layers):
        for label, t in (("keys", layer.k), ("values", layer.v)):
            if t.dim() != 3:
                raise KVError(f"{where}: layer {i} {label} shape {tuple(t.shape)} is not [kv_heads, seq, head_dim]")
            if check_finite and not torch.isfinite(t).all():
                raise KVError(f"{where}: NaN/Inf in layer {i} {label}")
        if layer.k.shape != layer.v.shape:
            raise KVError(f"{where}: layer {i} keys {tuple(layer.k.shape)} vs values {tuple(layer.v.shape)}")


# ---- model side --------------------------------------------------------------------------------

@torch.inference_mode()
def prefill(model, prefix_ids: torch.Tensor) -> tuple[list[list[LayerKV]], torch.Tensor]:
    """Prefill a batch of equal-length prefixes [B, P]; return per-prompt layers and first tokens [B]."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    cache = DynamicCache()  # no config: sliding layers keep the full prefix
    out = model(input_ids=prefix_ids.to(device), past_key_values=cache, use_cache=True)
    first = out.logits[:, -1].argmax(dim=-1).cpu()
    per_prompt: list[list[LayerKV]] = [[] for _ in range(prefix_ids.shape[0])]
    for layer in cache.layers:
        k, v = layer.keys.cpu(), layer.values.cpu()
        for b in range(k.shape[0]):
            per_prompt[b].append(LayerKV(k[b].clone(), v[b].clone()))
    return per_prompt, first


def build_cache(batch_layers: Sequence[Sequence[LayerKV]], device: torch.device | str = "cpu"):
    """A DynamicCache holding B prompts' caches (same per-layer shapes) stacked on the batch dim."""
    from transformers import DynamicCache

    n_layers = len(batch_layers[0])
    data = []
    for i in range(n_layers):
        k = torch.stack([layers[i].k for layers in batch_layers]).to(device)
        v = torch.stack([layers[i].v for layers in batch_layers]).to(device)
        data.append((k, v))
    return DynamicCache(ddp_cache_data=data)


def _positions(batch_layers: Sequence[Sequence[LayerKV]], prefix_len: int, steps: int, device) -> torch.Tensor:
    # new tokens sit right after the *original* prefix, whatever the cache kept
    return (prefix_len + torch.arange(steps, device=device)).unsqueeze(0).expand(len(batch_layers), steps)


@torch.inference_mode()
def continue_logits(model, batch_layers: Sequence[Sequence[LayerKV]], prefix_len: int,
                    input_ids: torch.Tensor) -> torch.Tensor:
    """Teacher-forced logits [B, T, V] (float32) for ``input_ids`` [B, T] after the injected cache."""
    device = next(model.parameters()).device
    cache = build_cache(batch_layers, device)
    T = input_ids.shape[1]
    out = model(input_ids=input_ids.to(device), past_key_values=cache, use_cache=True,
                position_ids=_positions(batch_layers, prefix_len, T, device))
    return out.logits.float().cpu()


@torch.inference_mode()
def greedy_generate(model, batch_layers: Sequence[Sequence[LayerKV]], prefix_len: int,
                    first_tokens: torch.Tensor, steps: int) -> torch.Tensor:
    """Free-running greedy decoding of ``steps`` tokens after ``first_tokens`` [B]; returns [B, steps]."""
    device = next(model.parameters()).device
    cache = build_cache(batch_layers, device)
    token = first_tokens.view(-1, 1).to(device)
    out_tokens = []
    for step in range(steps):
        pos = (prefix_len + step) * torch.ones_like(token)
        logits = model(input_ids=token, past_key_values=cache, use_cache=True, position_ids=pos).logits
        token = logits[:, -1].argmax(dim=-1, keepdim=True)
        out_tokens.append(token.cpu())
    return torch.cat(out_tokens, dim=1) if out_tokens else torch.empty(len(batch_layers), 0, dtype=torch.long)
