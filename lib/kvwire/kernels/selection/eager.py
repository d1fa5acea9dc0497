"""The eager GPU baseline of token selection: the CPU codecs' ``encode_layer`` / ``decode_layer`` ops
(``codecs/selection.py``, ``snapkv.py``, ``bitpack.py``) run one by one on the device, layer by layer.
CUDA's reductions order their sums their own way, so a near-tie may be broken differently."""

from __future__ import annotations

import torch

from ...codecs import LayerKV, bitpack
from ...codecs.base import LayerContext, section_header
from ...codecs.selection import edge_mask, top_up
from ...codecs.snapkv import snap_scores, window_size
from ..base import Decoded, GpuPayloads, Stats, check_cache, layer_contexts
from .layout import HDR, _require_finite


def encode_eager(kernel, kv: torch.Tensor, stats: Stats = None) -> GpuPayloads:
    """The CPU codec's ``encode_layer`` ops run one by one on the device tensors, layer by layer."""
    n_layers, _, _, _ = check_cache(kv, f"GPU {kernel.name} kernel")
    ctxs = layer_contexts(tuple(kv.shape), kv.dtype, stats)
    parts, offsets = [], [0]
    for i in range(n_layers):
        layer = LayerKV(kv[i, 0], kv[i, 1])
        _require_finite(kv[i:i + 1], kernel.name)
        n = kernel.codec.tensor.budget_for(ctxs[i])
        keep = _select_eager(kernel, layer, ctxs[i], n)
        idx = keep.nonzero().squeeze(1)
        k, v = layer.k.index_select(1, idx), layer.v.index_select(1, idx)
        mask = bitpack.pack(keep, 1)
        sections = [_raw(mask), _raw(k), _raw(v)]
        header = torch.frombuffer(bytearray(section_header([x.numel() for x in sections])), dtype=torch.uint8)
        parts.append(torch.cat([header.to(kv.device)] + sections))
        offsets.append(offsets[-1] + parts[-1].numel())
    return GpuPayloads(torch.cat(parts), tuple(offsets))


def _select_eager(kernel, layer: LayerKV, ctx: LayerContext, n: int) -> torch.Tensor:
    """The policy's ``select`` with its masks made on the device (``codecs/*.py``' ops)."""
    seq, dev = layer.k.shape[1], layer.k.device
    first, last = kernel._edges(n, seq)
    forced = edge_mask(seq, first, last).to(dev)
    if kernel.name == "streaming_llm":
        return forced
    if kernel.name == "keynorm":
        return kernel.codec.tensor.select(layer, ctx, n)  # device-agnostic as written
    if kernel.name == "h2o":
        from ...codecs.selection import stat

        return top_up(forced, stat(ctx, "attn_sum", kernel.name).sum(dim=0), n)
    p = kernel.params
    w = window_size(p["obs_window"], seq)
    scores = snap_scores(ctx, kernel.name, p["obs_window"], p["kernel_size"], p["pooling"])
    return top_up(forced, torch.cat([scores, torch.zeros(w, dtype=scores.dtype, device=dev)]), n)


def decode_eager(kernel, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype) -> Decoded:
    """The CPU codec's ``decode_layer`` ops on the device (section lengths from the layer sizes)."""
    n_layers, _, h, s, d = shape
    _, lay = kernel.decode_layout(payloads, tuple(shape), dtype)
    out = []
    for i in range(n_layers):
        p = payloads.layer(i)
        bits = bitpack.unpack(p[HDR:HDR + lay.mask_bytes], 1, 8 * lay.mask_bytes)
        positions = bits[:s].nonzero().squeeze(1).to(torch.int64)
        n = positions.numel()
        body = p[HDR + lay.mask_bytes:].clone()  # aligned copy (the CPU's tensor_from copies too)
        k = body[:lay.section[i]].view(dtype).reshape(h, n, d)
        v = body[lay.section[i]:].view(dtype).reshape(h, n, d)
        out.append(LayerKV(k, v, positions))
    return out


def _raw(t: torch.Tensor) -> torch.Tensor:
    t = t.contiguous().reshape(-1)
    return t.view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8, device=t.device)
