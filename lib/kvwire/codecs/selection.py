"""Token selection: shared machinery of the codecs that DROP tokens (StreamingLLM, H2O, SnapKV, ...).

A token-selection codec keeps ``n`` of a layer's ``seq`` tokens and sends only those. Dropped
tokens are removed, never zero-filled: ``decode_layer`` returns ``LayerKV(k_kept, v_kept,
positions)`` with ``k_kept``/``v_kept`` [kv_heads, n, head_dim] in the original dtype (bit-exact
copies of the kept tokens) and ``positions`` int64 [n], the kept tokens' original positions in
ascending order. Keys keep the RoPE of their original position; re-injection
(``kvwire.kv.continue_logits``) masks attention by these positions, so a layer's cache may be
any subset and layers may keep different counts.

Selection is per LAYER, not per head: one token set is shared by all kv heads of a layer,
because a transformers cache holds one sequence axis per layer (per-head sets would need a
ragged per-head cache the injection path does not have). Policies that score tokens per head
(attention, key norms) add the per-head scores over the kv heads of the layer; statistics from
extraction are already summed over the query heads that share a kv head (GQA). This differs
from the per-head selection of SnapKV, PyramidKV and the key-norm paper; say so in each codec.

Budget: ``keep`` (absolute, > 0) wins over ``budget`` (fraction); ``n = floor(budget * seq)``
clamped to ``[1, seq]``, so ``budget = 1`` keeps every token and a tiny budget keeps one.

Payload (three sections): a 1-bit keep mask over the layer's ``seq`` tokens (bit-packed, 8 tokens
per byte, ``ceil(seq / 8)`` bytes; its padding bits must be zero), then the kept keys and the kept
values as raw [kv_heads, n, head_dim] tensors in the cache dtype. ``n`` is the mask's popcount,
so the decoder checks every section length against it. At ``seq = 1024`` the mask costs 128 bytes
against 768 bytes per kept token of a 3x64 bf16 layer.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch

from ..errors import CodecError, KVError, WireError
from . import bitpack
from ..limits import MAX_TOKENS
from .base import (LayerContext, LayerKV, Param, TensorCodec, check_layer, pack_sections, require_finite,
                   tensor_bytes, tensor_from, unpack_sections)

BUDGET_PARAMS = {
    "budget": Param(float, 0.5, "fraction of each layer's tokens kept (floor, at least one token)",
                    minimum=0.0, maximum=1.0),
    "keep": Param(int, 0, "absolute number of tokens kept per layer (capped at the layer's length); 0 = use budget",
                  minimum=0, maximum=MAX_TOKENS),
}


def n_keep(seq: int, budget: float, keep: int) -> int:
    """Tokens a layer of ``seq`` tokens keeps: ``keep`` if set, else ``floor(budget * seq)``, within [1, seq]."""
    n = keep if keep > 0 else math.floor(budget * seq + 1e-9)
    return max(1, min(seq, n))


def edge_mask(seq: int, first: int = 0, last: int = 0) -> torch.Tensor:
    """Bool [seq]: the first ``first`` and the last ``last`` tokens."""
    idx = torch.arange(seq)
    return (idx < first) | (idx >= seq - last)


def top_up(forced: torch.Tensor, scores: torch.Tensor | None, n: int) -> torch.Tensor:
    """Bool [seq] keep mask: every ``forced`` token plus the ``n - |forced|`` best-scoring others.

    Higher score = kept first; ties go to the earlier token (stable sort), so selection is
    deterministic. ``forced`` must not hold more than ``n`` tokens.
    """
    free = n - int(forced.sum())
    if free < 0:
        raise CodecError(f"internal: {int(forced.sum())} forced tokens exceed the budget of {n}")
    if free == 0:
        return forced.clone()
    if scores is None:
        raise CodecError("internal: tokens left to choose but no scores")
    s = scores.double().masked_fill(forced, float("-inf"))
    order = torch.argsort(s, descending=True, stable=True)[:free]
    keep = forced.clone()
    keep[order] = True
    return keep


def stat(ctx: LayerContext, name: str, codec: str, rows: bool = False) -> torch.Tensor:
    """The per-layer statistic ``name`` (float32), shape-checked against the layer.

    ``attn_sum``-like stats are [kv_heads, seq]; with ``rows`` ([kv_heads, obs, seq]) like ``obs_attn``.
    """
    if name not in ctx.stats:
        have = ", ".join(sorted(ctx.stats)) or "none"
        raise CodecError(f"codec {codec!r} needs the attention statistic {name!r} for layer {ctx.layer} "
                         f"(have: {have}); re-extract with attention statistics (kvwire.kv.prefill_stats, "
                         f"extract_kv(attention_stats=True); in the workflow: extract.attention_stats: true) "
                         f"and pass stats=record.stats to wire.encode")
    t = ctx.stats[name]
    h, seq, _ = ctx.shape
    if rows:
        ok = t.dim() == 3 and t.shape[0] == h and t.shape[1] >= 1 and t.shape[2] == seq
    else:
        ok = tuple(t.shape) == (h, seq)
    if not ok:
        want = f"[{h}, obs, {seq}]" if rows else f"[{h}, {seq}]"
        raise KVError(f"layer {ctx.layer}: statistic {name!r} has shape {list(t.shape)}, expected {want}")
    t = t.float()
    if not torch.isfinite(t).all():
        raise KVError(f"layer {ctx.layer}: NaN/Inf in statistic {name!r}")
    return t


class TokenSelectionCodec(TensorCodec):
    """Base of the token-dropping codecs: subclasses only choose which tokens a layer keeps."""

    lossless = False
    PARAMS = BUDGET_PARAMS

    @abstractmethod
    def select(self, kv: LayerKV, ctx: LayerContext, n: int) -> torch.Tensor:
        """Bool keep mask [seq] with exactly ``n`` True entries."""

    def budget_for(self, ctx: LayerContext) -> int:
        """Tokens this layer keeps (PyramidKV overrides this with per-layer budgets)."""
        return n_keep(ctx.shape[1], self.params["budget"], self.params["keep"])

    def encode_layer(self, kv: LayerKV, ctx: LayerContext) -> bytes:
        keep = select_tokens(self, kv, ctx, self.name)
        idx = keep.nonzero().squeeze(1)
        k, v = kv.k.index_select(1, idx), kv.v.index_select(1, idx)
        return pack_sections([pack_keep_mask(keep), tensor_bytes(k), tensor_bytes(v)])

    def decode_layer(self, payload: bytes, ctx: LayerContext) -> LayerKV:
        return decode_selected(payload, ctx, self.name)


def select_tokens(policy: TokenSelectionCodec, kv: LayerKV, ctx: LayerContext, codec: str) -> torch.Tensor:
    """The checked keep mask [seq] that ``policy`` chooses for a full, finite layer (``codec`` names the caller)."""
    check_layer(kv, ctx)
    require_finite(kv, ctx, codec)  # dropped tokens too: nothing downstream sees them
    if kv.positions is not None:
        raise CodecError(f"codec {codec!r}: layer {ctx.layer} already holds a token subset; "
                         f"select from the full cache")
    seq = kv.k.shape[1]
    if seq < 1:
        raise KVError(f"layer {ctx.layer}: empty cache (0 tokens)")
    n = policy.budget_for(ctx)
    keep = policy.select(kv, ctx, n)
    if keep.shape != (seq,) or keep.dtype != torch.bool or int(keep.sum()) != n:
        raise CodecError(f"internal: policy {policy.name!r} selected {int(keep.sum())} of {seq} tokens, expected {n}")
    return keep


def pack_keep_mask(keep: torch.Tensor) -> bytes:
    """Bool [seq] -> 1 bit per token, ``ceil(seq / 8)`` bytes, padding bits zero."""
    return tensor_bytes(bitpack.pack(keep, 1))


def unpack_keep_mask(buf, seq: int, codec: str) -> torch.Tensor:
    """Inverse of ``pack_keep_mask``: the kept positions (int64, ascending); refuses set padding bits
    and a mask that keeps nothing."""
    nbytes = bitpack.packed_size(seq, 1)
    bits = bitpack.unpack(tensor_from(buf, torch.uint8, (nbytes,)), 1, 8 * nbytes)  # padding included
    if bits[seq:].any():
        raise WireError(f"codec {codec!r}: keep mask has bits set past the layer's {seq} tokens")
    positions = bits[:seq].nonzero().squeeze(1).to(torch.int64)
    if positions.numel() == 0:
        raise WireError(f"codec {codec!r}: keep mask keeps no token")
    return positions


def decode_selected(payload: bytes, ctx: LayerContext, codec: str) -> LayerKV:
    """Inverse of ``TokenSelectionCodec.encode_layer``: kept K/V and their positions."""
    h, seq, d = ctx.shape
    mask_b, kb, vb = unpack_sections(payload, 3, codec)
    positions = unpack_keep_mask(mask_b, seq, codec)
    n = positions.numel()
    k = tensor_from(kb, ctx.dtype, (h, n, d))
    v = tensor_from(vb, ctx.dtype, (h, n, d))
    return LayerKV(k, v, positions)
