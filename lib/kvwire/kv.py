"""KV caches on disk and in the model: extract by prefill, inject into a transformers Cache.

A KV file (safetensors) holds one prompt's prefix cache:

- ``layer.{i}.k`` / ``layer.{i}.v``: [kv_heads, seq, head_dim] in the model's dtype, exactly
  as the attention layers produced them (post-RoPE keys); ``layer.{i}.positions`` (int64)
  only when a codec kept a subset of tokens;
- ``positions`` (int64 [seq]: 0..P-1, the prefix's token positions), ``prefix_ids`` (int64 [P]),
  ``continuation_ids`` (int64 [T])
  and ``first_token`` (int64 [1]: the prefill's greedy next token, computed on the prefill
  side before the cache crosses the wire);
- optional attention statistics (``prefill_stats``), float32, per kv head:
  ``layer.{i}.attn_sum`` [kv_heads, seq] (attention each prefix token received from all prefix
  queries, summed over the query heads sharing the kv head) and ``layer.{i}.obs_attn``
  [kv_heads, obs, seq] (attention of the last ``obs`` prefix queries to every prefix token);
  loaded into ``KVRecord.stats`` and handed to the codecs (H2O, SnapKV, PyramidKV read them);
- metadata: format tag, model name/source, dataset, prompt id, dtype, layer types, and
  ``window_starts`` when a sliding-window layer was trimmed (below).

Sliding-window layers (Gemma 3: 15 of 18 layers, window 512) are trimmed at extraction to the
tokens decode can read (``window_starts``, ``trim_layers``): a layer whose first decode query, at
position P, sees the prefix positions ``p`` with ``P - p < window`` (transformers' mask:
``kv_idx > q_idx - window``) keeps exactly those ``window - 1`` tokens, positions ``P - window + 1
.. P - 1``; later decode steps read fewer of them, never an earlier one. A trimmed layer is stored
dense ([kv_heads, n, head_dim], no ``positions``), so codecs see only the kept tokens and need not
know; ``meta["window_starts"]`` (one int per layer: the position of its first stored token, 0 for
an untrimmed layer) says where it starts, and the wire header carries it on (``KVRecord.meta``).
A record's layer ``positions``, as a token-selection codec returns them, index the STORED tokens;
``KVRecord.placed_layers`` adds the layer's start, giving the original positions that re-injection
needs. Records without a trimmed layer (models without sliding windows, prefixes shorter than the
window) have no ``window_starts`` key and are byte-identical to untrimmed extraction.

Prefill uses ``DynamicCache()`` *without* a config so the prefill itself sees every token and
returns them all; the trimming is ours, by position. The other route (a config-built cache whose
sliding layers keep ``window - 1`` tokens and a ``cumulative_length``) silently shifts positions by
one when rebuilt with ``DynamicCache(ddp_cache_data=...)``; injection here never does that: it
places every token by its original position (``_position_masks``) -- ``tests/test_kv.py`` and
``tests/test_sliding_window.py`` guard both routes.

A decoded cache whose layers carry ``positions`` (a token-selection codec dropped tokens) is
re-injected with per-layer attention masks built from the kept tokens' original positions
(``_position_masks``): transformers sizes its causal mask from one layer's cache length, which
is wrong when layers kept different numbers of tokens (PyramidKV), and its sliding-window mask
counts cache slots, not positions. Dense caches (no ``positions``) take the unchanged path.
"""

from __future__ import annotations

import contextvars
import functools
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .codecs import LayerKV
from .errors import KVError
from .io import atomic_path
from .windows import window_start

FORMAT = "kvwire-kv/1"
_LAYER_TENSORS = ("k", "v", "positions")  # per-layer names that are not statistics


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
    stats: list[dict[str, torch.Tensor]] = field(default_factory=list)  # per layer; empty when not extracted

    @property
    def seq_len(self) -> int:
        """Length of the original prefix (the position the next token takes)."""
        if self.prefix_ids is not None:
            return int(self.prefix_ids.numel())
        if "prefix_len" in self.meta:
            return int(self.meta["prefix_len"])
        return self.window_starts[0] + int(self.layers[0].k.shape[1])  # a dense layer ends at the prefix's end

    @property
    def raw_bytes(self) -> int:
        """Bytes of the stored K/V: a trimmed sliding-window layer counts only the tokens it keeps."""
        return sum(layer.raw_bytes for layer in self.layers)

    @property
    def window_starts(self) -> list[int]:
        """Per layer, the original position of its first stored token (all 0 when nothing was trimmed)."""
        starts = self.meta.get("window_starts")
        return [0] * len(self.layers) if starts is None else [int(s) for s in starts]

    def placed_layers(self, layers: Sequence[LayerKV] | None = None) -> list[LayerKV]:
        """The record's layers -- or a codec's decoding of them -- with their tokens' ORIGINAL positions,
        as re-injection (``continue_logits``, ``greedy_generate``, ...) needs them. The identity on a
        record without trimmed layers."""
        return place_layers(self.layers if layers is None else layers, self.window_starts)

    def check_windows(self, where: str) -> None:
        """``window_starts`` fits the layers: one start per layer inside the prefix, a dense trimmed layer
        ends at the prefix's end, and kept positions (a token-selected layer) index stored tokens."""
        if "window_starts" not in self.meta:
            return
        starts, P = self.meta["window_starts"], self.seq_len
        if not isinstance(starts, list) or len(starts) != len(self.layers):
            raise KVError(f"{where}: window_starts {starts!r} is not one start per layer ({len(self.layers)})")
        for i, (layer, s) in enumerate(zip(self.layers, starts)):
            if not isinstance(s, int) or not 0 <= s < P:
                raise KVError(f"{where}: layer {i} window start {s!r} outside the {P}-token prefix")
            n = layer.k.shape[1]
            if layer.positions is None and n != P - s:
                raise KVError(f"{where}: layer {i} stores {n} tokens from position {s}, "
                              f"expected {P - s} (to the end of the {P}-token prefix)")
            if layer.positions is not None and n and int(layer.positions.max()) >= P - s:
                raise KVError(f"{where}: layer {i} keeps stored token {int(layer.positions.max())} "
                              f"of the {P - s} stored from position {s}")

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
    if record.stats and len(record.stats) != len(record.layers):
        raise KVError(f"{len(record.stats)} per-layer stats for {len(record.layers)} layers")
    for i, stats in enumerate(record.stats):
        for name, t in stats.items():
            if name in _LAYER_TENSORS or not name.isidentifier():
                raise KVError(f"layer {i}: statistic name {name!r} is reserved or not an identifier")
            tensors[f"layer.{i}.{name}"] = t.detach().to(torch.float32).contiguous().cpu()
    # token positions of the stored prefix (the RoPE slots its keys were computed at)
    tensors["positions"] = torch.arange(record.seq_len, dtype=torch.int64)
    if record.prefix_ids is not None:
        tensors["prefix_ids"] = record.prefix_ids.to(torch.int64).contiguous()
    if record.continuation_ids is not None:
        tensors["continuation_ids"] = record.continuation_ids.to(torch.int64).contiguous()
    if record.first_token is not None:
        tensors["first_token"] = torch.tensor([record.first_token], dtype=torch.int64)
    record.check_windows(str(path))
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
            stats: list[dict[str, torch.Tensor]] = [{} for _ in range(n_layers)]
            for key in keys:
                parts = key.split(".", 2)
                if len(parts) == 3 and parts[0] == "layer" and parts[2] not in _LAYER_TENSORS:
                    if not parts[1].isdigit() or int(parts[1]) >= n_layers:
                        raise KVError(f"{path}: statistic {key!r} names no layer of {n_layers}")
                    stats[int(parts[1])][parts[2]] = fh.get_tensor(key)
            first = optional("first_token")
            positions = optional("positions")
            record = KVRecord(layers=layers, prefix_ids=optional("prefix_ids"),
                              continuation_ids=optional("continuation_ids"),
                              first_token=None if first is None else int(first[0]),
                              meta=json.loads(meta.get("meta", "{}")),
                              stats=stats if any(stats) else [])
    except KVError:
        raise
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise KVError(f"{path}: unreadable KV file ({exc})") from exc
    validate_layers(record.layers, str(path), check_finite=check_finite)
    if positions is not None and positions.numel() != record.seq_len:
        raise KVError(f"{path}: {positions.numel()} positions for a {record.seq_len}-token prefix")
    record.check_windows(str(path))
    return record


def place_layers(layers: Sequence[LayerKV], starts: Sequence[int]) -> list[LayerKV]:
    """Layers whose stored tokens start at ``starts[i]`` (a window-trimmed layer), with every token's
    original position: ``start + position`` of a kept token, ``start .. start + n - 1`` for a dense
    layer. Layers that start at 0 are returned as they are (a dense one stays dense)."""
    if len(starts) != len(layers):
        raise KVError(f"{len(starts)} window starts for {len(layers)} layers")
    out = []
    for layer, start in zip(layers, starts):
        if start == 0:
            out.append(layer)
            continue
        rel = layer.positions if layer.positions is not None else torch.arange(layer.k.shape[1])
        out.append(LayerKV(layer.k, layer.v, rel.to(torch.int64) + int(start)))
    return out


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
    layers, first, _ = _prefill(model, prefix_ids, None)
    return layers, first


@torch.inference_mode()
def prefill_stats(model, prefix_ids: torch.Tensor, *, obs_window: int = 32, sums: bool = True,
                  timings: dict[str, float] | None = None
                  ) -> tuple[list[list[LayerKV]], torch.Tensor, list[list[dict[str, torch.Tensor]]]]:
    """``prefill`` plus per-prompt, per-layer attention statistics for token-selection codecs.

    ``attn_sum`` [kv_heads, P]: attention each prefix token received from every prefix query
    (H2O's accumulated attention); ``obs_attn`` [kv_heads, min(obs_window, P), P]: attention of
    the last ``obs_window`` prefix queries (SnapKV's observation window). Both are float32 and
    summed over the query heads that share a kv head (GQA). The forward pass itself runs through
    the model's own attention function (sdpa or eager), so the KV cache and first token are
    bit-identical to ``prefill``; the probabilities are recomputed on the side from the same
    queries, keys and mask, one block of queries at a time ([B, heads, block, P] float32 at most
    ~256 MB), and reduced at once, never held for all layers. ``sums=False`` keeps only
    ``obs_attn``: it needs the last ``obs_window`` queries' scores instead of all P x P, which on a
    2048-token prefix is most of the statistics' cost (SnapKV and PyramidKV need no more).

    ``timings`` (a dict, filled in): ``stats_seconds``, the wall time of the side computation alone
    (every layer, the whole batch; device-synchronized on a GPU), and ``prefill_seconds``, the whole
    call's: what a token-selection codec costs beyond a plain prefill, measured where it is paid.
    """
    if obs_window < 1:
        raise KVError(f"obs_window must be >= 1, got {obs_window}")
    return _prefill(model, prefix_ids, obs_window, sums, timings)


def _prefill(model, prefix_ids: torch.Tensor, obs_window: int | None, sums: bool = True,
             timings: dict[str, float] | None = None):
    from transformers import DynamicCache

    device = next(model.parameters()).device
    cache = DynamicCache()  # no config: sliding layers keep the full prefix
    collected: dict[int, dict[str, torch.Tensor]] = {}
    t0 = time.perf_counter()
    with _attention_stats(model, collected, obs_window, sums, timer=timings):
        # only the last position's logits are needed: Gemma-3's 262k-word head costs more than its layers
        out = model(input_ids=prefix_ids.to(device), past_key_values=cache, use_cache=True, logits_to_keep=1)
    if timings is not None:
        _sync(device)
        timings["prefill_seconds"] = time.perf_counter() - t0
    first = out.logits[:, -1].argmax(dim=-1).cpu()
    B = prefix_ids.shape[0]
    per_prompt: list[list[LayerKV]] = [[] for _ in range(B)]
    for layer in cache.layers:
        k, v = layer.keys.cpu(), layer.values.cpu()
        for b in range(k.shape[0]):
            per_prompt[b].append(LayerKV(k[b].clone(), v[b].clone()))
    if obs_window is None:
        return per_prompt, first, None
    n_layers = len(cache.layers)
    if sorted(collected) != list(range(n_layers)):
        raise KVError(f"attention statistics came back for layers {sorted(collected)}, expected 0..{n_layers - 1} "
                      f"(model {type(model).__name__} does not route attention through transformers' interface?)")
    stats = [[{name: t[b].clone() for name, t in collected[i].items()} for i in range(n_layers)] for b in range(B)]
    return per_prompt, first, stats


# sliding-window layers: keep only what decode reads --------------------------------------------

_TOKEN_STATS = ("attn_sum", "obs_attn")  # attention statistics with one entry per prefix token (last dim)


def sliding_windows(model) -> list[int | None]:
    """Per layer, the sliding window its attention masks with (None: full attention), read off the
    attention modules as ``_position_masks`` reads it at re-injection."""
    attn = _attention_modules(model)
    return [int(getattr(attn[i], "sliding_window", None) or 0) or None for i in range(len(attn))]


def decode_window_start(window: int | None, prefix_len: int) -> int:
    """The first prefix position that a decode query can read on a layer with this sliding window.

    The first decode token sits at ``prefix_len`` and reads the prefix positions transformers' own
    sliding-window mask allows (``sliding_window_overlay``: ``kv_idx > q_idx - window``), i.e. the
    last ``window - 1`` tokens; every later query reads a subset of those. So a window of 512 keeps
    511 tokens, not 512 (the 512th slot is the query's own token). 0 for a full-attention layer or a
    prefix inside the window."""
    if not window:
        return 0
    from transformers.masking_utils import sliding_window_overlay

    read = torch.as_tensor(sliding_window_overlay(int(window))(0, 0, torch.tensor(prefix_len),
                                                               torch.arange(prefix_len)), dtype=torch.bool)
    if not bool(read.any()):
        raise KVError(f"a sliding window of {window} lets decode read no prefix token")
    start = int(read.to(torch.int8).argmax())
    if not bool(read[start:].all()) or start != window_start(window, prefix_len):
        # re-injection masks by ``query_pos - key_pos < window`` (``_position_masks``), and everything that
        # sizes a cache from a model's shape counts ``kvwire.windows.kept_tokens``: all must agree
        raise KVError(f"transformers' sliding-window mask (window {window}) reads prefix positions other than "
                      f"{window_start(window, prefix_len)}..{prefix_len - 1}: kvwire's window logic needs updating")
    return start


def window_starts(model, prefix_len: int) -> list[int]:
    """Per layer, the first prefix position any decode step reads (``decode_window_start``)."""
    return [decode_window_start(w, prefix_len) for w in sliding_windows(model)]


def trim_layers(layers: Sequence[LayerKV], starts: Sequence[int]) -> list[LayerKV]:
    """Keep each layer's tokens from ``starts[i]`` on (compact copies); layers starting at 0 unchanged."""
    if len(starts) != len(layers):
        raise KVError(f"{len(starts)} window starts for {len(layers)} layers")
    out = []
    for i, (layer, start) in enumerate(zip(layers, starts)):
        if layer.positions is not None:
            raise KVError(f"layer {i}: trim a full prefix cache, not a token subset")
        out.append(layer if start == 0 else
                   LayerKV(layer.k[:, start:].clone(), layer.v[:, start:].clone()))
    return out


def trim_stats(stats: Sequence[dict[str, torch.Tensor]], starts: Sequence[int]) -> list[dict[str, torch.Tensor]]:
    """The per-token attention statistics (``attn_sum``, ``obs_attn``: last dim = prefix tokens) cut to
    the same tokens as ``trim_layers``; other statistics pass unchanged."""
    if len(starts) != len(stats):
        raise KVError(f"{len(starts)} window starts for statistics of {len(stats)} layers")
    return [{name: (t[..., start:].clone() if start and name in _TOKEN_STATS else t) for name, t in layer.items()}
            for layer, start in zip(stats, starts)]


# attention statistics: a wrapper attention function that runs the model's own implementation
# (so the forward is unchanged) and reduces the attention probabilities on the side
_STATS_SINK: contextvars.ContextVar = contextvars.ContextVar("kvwire_attention_stats", default=None)
_STATS_IMPLS = {"sdpa": "kvwire_stats_sdpa", "eager": "kvwire_stats_eager"}
_STATS_BLOCK_ELEMENTS = 1 << 26  # float32 scores per query block: 256 MB


def _register_stats_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

    for base, name in _STATS_IMPLS.items():
        if name not in AttentionInterface._global_mapping:
            AttentionInterface.register(name, _stats_attention_fn(base))
            AttentionMaskInterface.register(name, sdpa_mask if base == "sdpa" else eager_mask)


def _stats_attention_fn(base: str):
    def attention(module, query, key, value, attention_mask, **kwargs):
        if base == "sdpa":
            from transformers.integrations.sdpa_attention import sdpa_attention_forward as fn
        else:  # the modeling file's own eager function (softcapping etc. included)
            fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
            if fn is None:
                raise KVError(f"{type(module).__name__}: no eager_attention_forward in its modeling file")
        out = fn(module, query, key, value, attention_mask, **kwargs)
        sink = _STATS_SINK.get()
        if sink is not None:
            sink(module, query, key, attention_mask, kwargs)
        return out

    return attention


@contextmanager
def _attention_stats(model, collected: dict[int, dict[str, torch.Tensor]], obs_window: int | None,
                     sums: bool = True, timer: dict[str, float] | None = None):
    """Route attention through the statistics wrapper while the block runs (no-op when ``obs_window`` is None).
    ``timer``: its ``stats_seconds`` gets the wall time spent computing the statistics (set to 0 first)."""
    if timer is not None:
        timer["stats_seconds"] = 0.0
    if obs_window is None:
        yield
        return
    base = model.config._attn_implementation
    if base not in _STATS_IMPLS:
        raise KVError(f"attention statistics need sdpa or eager attention; the model uses {base!r}")
    _register_stats_attention()

    def sink(module, query, key, mask, kwargs):
        if timer is not None:
            _sync(query.device)  # the layer's own attention is not the statistics' cost
            t0 = time.perf_counter()
        collected[module.layer_idx] = _reduce_attention(query, key, mask, kwargs, obs_window, sums)
        if timer is not None:
            _sync(query.device)
            timer["stats_seconds"] += time.perf_counter() - t0

    token = _STATS_SINK.set(sink)
    model.config._attn_implementation = _STATS_IMPLS[base]
    try:
        yield
    finally:
        model.config._attn_implementation = base
        _STATS_SINK.reset(token)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _reduce_attention(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, kwargs: dict,
                      obs_window: int, sums: bool = True) -> dict[str, torch.Tensor]:
    """Attention probabilities (as the model computes them) reduced to ``attn_sum`` (if ``sums``) and
    ``obs_attn``, on the CPU."""
    B, Hq, Q, D = query.shape
    Hkv, K = key.shape[1], key.shape[2]
    G = Hq // Hkv  # query heads per kv head (repeat_kv order: kv head h serves query heads h*G .. h*G+G-1)
    scaling = kwargs.get("scaling") or D ** -0.5
    softcap = kwargs.get("softcap")
    q = query.float().view(B, Hkv, G, Q, D)
    k = key.float().unsqueeze(2)  # [B, Hkv, 1, K, D]
    W = min(obs_window, Q)
    attn_sum = torch.zeros(B, Hkv, K, dtype=torch.float32, device=query.device)
    obs = []
    block = max(1, _STATS_BLOCK_ELEMENTS // max(1, B * Hq * K))
    key_pos = torch.arange(K, device=query.device)
    first = 0 if sums else Q - W  # without the sums only the observation window's queries are needed
    for start in range(first, Q, block):  # blocks of queries bound the memory; each block is vectorised
        stop = min(Q, start + block)
        scores = torch.matmul(q[:, :, :, start:stop], k.transpose(-1, -2)) * scaling  # [B, Hkv, G, c, K]
        if softcap:
            scores = torch.tanh(scores / softcap) * softcap
        if mask is None:  # sdpa's causal fast path: bottom-right aligned causal mask
            q_pos = torch.arange(start, stop, device=query.device) + (K - Q)
            scores = scores.masked_fill(key_pos > q_pos[:, None], float("-inf"))
        else:
            m = mask[:, :, start:stop, :K].unsqueeze(2)  # [B|1, 1, 1, c, K]
            scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
        probs = torch.softmax(scores, dim=-1).sum(dim=2)  # [B, Hkv, c, K], summed over the group's query heads
        attn_sum += probs.sum(dim=2)
        lo = max(start, Q - W)
        if lo < stop:
            obs.append(probs[:, :, lo - start:])
    out = {"obs_attn": torch.cat(obs, dim=2).cpu()}
    if sums:
        out["attn_sum"] = attn_sum.cpu()
    return out


@torch.inference_mode()
def continue_attention(model, batch_layers: Sequence[Sequence[LayerKV]], prefix_len: int,
                       input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``continue_logits`` plus where the continuation's queries look: ``mass`` [B, layers, P] float32,
    the attention each cached token receives from all continuation queries, summed over heads, as the
    model computes it (the forward is unchanged, see ``prefill_stats``), at the token's original
    position (P = ``prefix_len``); positions a layer does not hold (outside a trimmed sliding window,
    dropped by a codec) get 0."""
    collected: dict[int, dict[str, torch.Tensor]] = {}
    logits = _continue(model, batch_layers, prefix_len, input_ids, collected)
    n_layers = len(batch_layers[0])
    if sorted(collected) != list(range(n_layers)):
        raise KVError(f"attention came back for layers {sorted(collected)}, expected 0..{n_layers - 1}")
    kept = _kept_positions(batch_layers, "cpu", prefix_len)
    mass = torch.zeros(len(batch_layers), n_layers, prefix_len, dtype=torch.float32)
    for i in range(n_layers):
        received = collected[i]["attn_sum"].sum(dim=1)[:, :batch_layers[0][i].k.shape[1]].float()  # [B, cached]
        if kept is None:
            mass[:, i] = received
        else:
            mass[:, i].scatter_(1, kept[i], received)
    return logits, mass


def build_cache(batch_layers: Sequence[Sequence[LayerKV]], device: torch.device | str = "cpu", *,
                dtype: torch.dtype | None = None, spare: int = 0):
    """A DynamicCache holding B prompts' caches (same per-layer shapes) stacked on the batch dim.

    ``dtype``: the dtype the model computes in (the stored KV is cast up or down to it; a float32
    scoring run over a bf16 cache keeps bf16's values exactly). ``spare``: room for that many new
    tokens per layer, written in place instead of ``torch.cat`` copying the whole cache every step.
    Each layer is copied once, straight into its buffer.
    """
    from transformers import DynamicCache

    cache = DynamicCache()
    layer_class = _preallocated_layer_class()
    cache.layers = [layer_class([layers[i] for layers in batch_layers], device, dtype, spare)
                    for i in range(len(batch_layers[0]))]
    return cache


@functools.cache
def _preallocated_layer_class():
    """Built on first use: importing transformers' cache module at kvwire.kv import would slow start-up."""
    from transformers.cache_utils import DynamicLayer

    class _PreallocatedLayer(DynamicLayer):
        """A full-attention cache layer with spare capacity: ``update`` writes new tokens in place
        (``keys``/``values`` are views of the filled part) and ``truncate`` forgets the newest ones."""

        def __init__(self, rows: Sequence[LayerKV], device, dtype: torch.dtype | None, spare: int):
            super().__init__()
            H, S, D = rows[0].k.shape
            dtype = dtype or rows[0].k.dtype
            self._k = torch.empty(len(rows), H, S + spare, D, dtype=dtype, device=device)
            self._v = torch.empty(len(rows), rows[0].v.shape[0], S + spare, rows[0].v.shape[2], dtype=dtype,
                                  device=device)
            for b, row in enumerate(rows):
                if row.k.shape != (H, S, D) or row.v.shape[1] != S:
                    raise KVError(f"prompt {b} of a batch has layer shape {tuple(row.k.shape)}, the first "
                                  f"{(H, S, D)}: a batch needs one shape per layer")
                self._k[b, :, :S] = row.k
                self._v[b, :, :S] = row.v
            self.dtype, self.device, self.is_initialized = dtype, self._k.device, True
            self.truncate(S)

        def truncate(self, n: int) -> None:
            self._n = n
            self.keys, self.values = self._k[:, :, :n], self._v[:, :, :n]

        def update(self, key_states, value_states, *args, **kwargs):
            T = key_states.shape[-2]
            if self._n + T > self._k.shape[2]:  # out of room: grow like DynamicLayer
                self._k = torch.cat([self.keys, key_states], dim=-2)
                self._v = torch.cat([self.values, value_states], dim=-2)
            else:
                self._k[:, :, self._n:self._n + T] = key_states
                self._v[:, :, self._n:self._n + T] = value_states
            self.truncate(self._n + T)
            return self.keys, self.values

    return _PreallocatedLayer


def _positions(batch_layers: Sequence[Sequence[LayerKV]], prefix_len: int, steps: int, device) -> torch.Tensor:
    # new tokens sit right after the *original* prefix, whatever the cache kept
    return (prefix_len + torch.arange(steps, device=device)).unsqueeze(0).expand(len(batch_layers), steps)


def _kept_positions(batch_layers: Sequence[Sequence[LayerKV]], device, prefix_len: int) -> list[torch.Tensor] | None:
    """Per layer, the original positions [B, n_kept] of the cached tokens; None for a dense cache.

    A layer without positions must hold the whole prefix: a window-trimmed layer (or a codec's decoding
    of one) re-enters only with its original positions (``KVRecord.placed_layers``), never as if it
    started at position 0 -- that would be silently wrong, so it is refused here."""
    for b, layers in enumerate(batch_layers):
        for i, layer in enumerate(layers):
            n = layer.k.shape[1]
            if layer.positions is None and n != prefix_len:
                raise KVError(f"prompt {b}, layer {i}: {n} cached tokens without positions for a {prefix_len}-token "
                              f"prefix (a window-trimmed layer? re-inject KVRecord.placed_layers())")
            if layer.positions is not None and n and int(layer.positions.max()) >= prefix_len:
                raise KVError(f"prompt {b}, layer {i}: kept position {int(layer.positions.max())} is outside "
                              f"the {prefix_len}-token prefix")
    if all(layer.positions is None for layers in batch_layers for layer in layers):
        return None
    out = []
    for i in range(len(batch_layers[0])):
        rows = []
        for layers in batch_layers:
            layer = layers[i]
            pos = layer.positions if layer.positions is not None else torch.arange(layer.k.shape[1])
            if pos.shape != (layer.k.shape[1],):
                raise KVError(f"layer {i}: {tuple(pos.shape)} positions for {layer.k.shape[1]} cached tokens")
            rows.append(pos.to(torch.int64))
        out.append(torch.stack(rows).to(device))
    return out


def _attention_modules(model) -> dict[int, torch.nn.Module]:
    """The model's attention modules by layer index."""
    return {m.layer_idx: m for name, m in model.named_modules()
            if name.rsplit(".", 1)[-1] == "self_attn" and isinstance(getattr(m, "layer_idx", None), int)}


@contextmanager
def _position_masks(model, kept: list[torch.Tensor] | None, prefix_len: int):
    """Give every attention layer a mask built from token positions (a no-op for a dense cache).

    Layer i attends key j from query t iff ``pos_j <= pos_t`` (and ``pos_t - pos_j < window`` on
    sliding-window layers), where cached keys carry their kept original positions and new tokens
    sit at ``prefix_len + n``. This is exact whatever each layer kept, so layers may hold different
    numbers of tokens.
    """
    if kept is None:
        yield
        return
    impl = model.config._attn_implementation
    if impl not in ("sdpa", "eager"):
        raise KVError(f"a token-selected cache needs sdpa or eager attention to re-inject; the model uses {impl!r}")
    attn = _attention_modules(model)
    if sorted(attn) != list(range(len(kept))):
        raise KVError(f"found attention modules for layers {sorted(attn)}, but the cache has {len(kept)} layers")

    def hook(module, args, kwargs):
        i = module.layer_idx
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if "attention_mask" not in kwargs or "past_key_values" not in kwargs:
            raise KVError(f"{type(module).__name__} was not given its attention mask and cache as keywords")
        T = hidden.shape[1]
        cached = kept[i]
        n_new = kwargs["past_key_values"].layers[i].get_seq_length() - cached.shape[1]  # new tokens cached so far
        new_pos = prefix_len + torch.arange(n_new + T, device=cached.device)
        key_pos = torch.cat([cached, new_pos.expand(cached.shape[0], -1)], dim=1)  # [B, K]
        q_pos = new_pos[n_new:]
        delta = q_pos.view(1, T, 1) - key_pos.unsqueeze(1)  # [B, T, K]
        allowed = delta >= 0
        window = getattr(module, "sliding_window", None)
        if window:
            allowed &= delta < window
        mask = allowed.unsqueeze(1)  # [B, 1, T, K]
        if impl == "eager":
            mask = torch.zeros(mask.shape, dtype=hidden.dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(hidden.dtype).min)
        kwargs["attention_mask"] = mask
        return args, kwargs

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in attn.values()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def continue_logits(model, batch_layers: Sequence[Sequence[LayerKV]], prefix_len: int,
                    input_ids: torch.Tensor) -> torch.Tensor:
    """Teacher-forced logits [B, T, V] (float32) for ``input_ids`` [B, T] after the injected cache."""
    return _continue(model, batch_layers, prefix_len, input_ids)


def _continue(model, batch_layers, prefix_len, input_ids, collected=None) -> torch.Tensor:
    """The teacher-forced forward after the injected cache; with ``collected``, attention sums on the side."""
    device, dtype = _device_dtype(model)
    cache = build_cache(batch_layers, device, dtype=dtype)
    T = input_ids.shape[1]
    with _position_masks(model, _kept_positions(batch_layers, device, prefix_len), prefix_len), \
            _attention_stats(model, collected, None if collected is None else 1):
        out = model(input_ids=input_ids.to(device), past_key_values=cache, use_cache=True,
                    position_ids=_positions(batch_layers, prefix_len, T, device))
    return out.logits.float().cpu()


@torch.inference_mode()
def greedy_generate(model, batch_layers: Sequence[Sequence[LayerKV]], prefix_len: int,
                    first_tokens: torch.Tensor, steps: int) -> torch.Tensor:
    """Free-running greedy decoding of ``steps`` tokens after ``first_tokens`` [B]; returns [B, steps]."""
    device, dtype = _device_dtype(model)
    cache = build_cache(batch_layers, device, dtype=dtype, spare=steps)
    token = first_tokens.view(-1, 1).to(device)
    out_tokens = []
    with _position_masks(model, _kept_positions(batch_layers, device, prefix_len), prefix_len):
        for step in range(steps):
            pos = (prefix_len + step) * torch.ones_like(token)
            logits = model(input_ids=token, past_key_values=cache, use_cache=True, position_ids=pos).logits
            token = logits[:, -1].argmax(dim=-1, keepdim=True)
            out_tokens.append(token.cpu())
    return torch.cat(out_tokens, dim=1) if out_tokens else torch.empty(len(batch_layers), 0, dtype=torch.long)


@torch.inference_mode()
def greedy_against(model, batch_layers: Sequence[Sequence[LayerKV]], prefix_len: int,
                   first_tokens: torch.Tensor, draft: torch.Tensor) -> torch.Tensor:
    """Free-running greedy decoding of ``draft.shape[1]`` tokens, verified against a ``draft`` [B, S].

    Greedy decoding reproduces the draft for as long as each step's argmax equals the draft's token,
    so one teacher-forced forward over the draft finds every row's first divergence; only the steps
    after the earliest divergence run one token at a time. The result is the greedy generation
    (exactly the draft where nothing diverges) at a fraction of the sequential steps for a
    near-lossless cache. The reference run passes its own step-by-step generation through this
    function too, so the original cache reproduces the stored draft bit for bit.
    """
    device, dtype = _device_dtype(model)
    B, S = draft.shape
    if S == 0:
        return draft.clone()
    first = first_tokens.view(-1, 1).to(device)
    draft = draft.to(device)
    cache = build_cache(batch_layers, device, dtype=dtype, spare=S)
    with _position_masks(model, _kept_positions(batch_layers, device, prefix_len), prefix_len):
        inputs = torch.cat([first, draft[:, :-1]], dim=1)
        pos = prefix_len + torch.arange(S, device=device).expand(B, S)
        pred = model(input_ids=inputs, past_key_values=cache, use_cache=True, position_ids=pos).logits.argmax(-1)
        diverged = pred != draft
        if not bool(diverged.any()):
            return draft.cpu().clone()
        # row b's generation is draft[:d_b] then pred[b, d_b]; steps after the earliest divergence run one by one
        d = torch.where(diverged.any(1), diverged.int().argmax(1), torch.full((B,), S, device=device))
        out = draft.clone()
        rows = d < S
        out[rows, d[rows]] = pred[rows, d[rows]]
        d0 = int(d.min())
        for layer in cache.layers:
            layer.truncate(layer.get_seq_length() - S + d0 + 1)  # keep the inputs of steps 0..d0
        for t in range(d0 + 1, S):
            step_pos = torch.full((B, 1), prefix_len + t, device=device)
            logits = model(input_ids=out[:, t - 1:t], past_key_values=cache, use_cache=True,
                           position_ids=step_pos).logits
            free = d < t  # rows already past their divergence take the model's token
            out[free, t] = logits[free, -1].argmax(-1)
    return out.cpu()


class _TransposedLinear(torch.nn.Module):
    """``x @ W^T`` with W^T stored contiguous: on a CPU, a few rows (a decode step) run 2-3x faster
    this way than ``F.linear`` on the [out, in] weight (bench/NOTES.md: 8 -> 19 GB/s of weight read
    for 7 rows), and as fast for many rows."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.weight_t = linear.weight.detach().t().contiguous()
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x @ self.weight_t
        return out if self.bias is None else out + self.bias


def transpose_linears_for_cpu(model):
    """Swap every ``nn.Linear`` (projections, MLP, output head) for ``_TransposedLinear`` when the
    model runs on a CPU (a no-op elsewhere, and when already done). Scoring jobs apply it to the
    reference and to every codec alike, so comparisons stay exact; outputs differ from
    ``F.linear``'s only in float rounding. The free greedy steps are memory-bound on the weights,
    so this is most of a quality job's cost."""
    if next(model.parameters()).device.type != "cpu":
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, _TransposedLinear(child))
    return model


def _device_dtype(model) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype
