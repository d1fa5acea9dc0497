"""The naive GPU baseline of ``guardband``: the CPU codec's torch code (``GuardBand.encode_layer`` /
``decode_layer``, ``_quantize``, ``_decode_segment``) run op by op on the device tensors, layer by
layer, into the same payload bytes -- with the numpy bit packing and host byte strings replaced by
device torch ops (the same arithmetic as ``bitpack.pack``), and without the CPU codec's finite
checks. Its token selection runs torch's float32 reductions on the device, so on a GPU it may keep
a different token than the CPU codec where two scores are within float32 rounding at the cut.
"""

from __future__ import annotations

import torch

from ...codecs import LayerKV
from ...codecs.base import LayerContext, section_header
from ...codecs.guardband import _PLAN
from ...codecs.selection import top_up
from ...errors import CodecError
from ..base import GpuPayloads, Stats, check_cache
from ..bytepack import pack, unpack


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _quantize(buf: torch.Tensor, bits: int, group: int, sdt: torch.dtype) -> torch.Tensor:
    """``codecs/guardband._quantize`` on the device: packed codes | scales | zeros."""
    qmax = 2**bits - 1
    rows = buf.view(-1, group)
    hi = rows.amax(dim=1, keepdim=True)
    zero = rows.amin(dim=1, keepdim=True).to(sdt)
    zf = zero.float()
    scale = hi.sub_(zf).div_(qmax).to(sdt)
    s = scale.float()
    inv = torch.where(s > 0, s.reciprocal(), 0.0)
    rows.sub_(torch.add(zf, s, alpha=-0.5)).mul_(inv).clamp_(0, qmax)
    return torch.cat([pack(rows.to(torch.uint8), bits), _bytes(scale), _bytes(zero)])


def encode_eager(kernel, kv: torch.Tensor, stats: Stats = None) -> GpuPayloads:
    n, h, s, d = check_cache(kv, "guardband eager baseline")
    lay = kernel.layout(n, (h, s, d), kv.dtype)
    codec = kernel.codec.tensor
    if not lay.plan.feasible and kernel.params["strict"]:
        raise CodecError(codec._unreachable(lay.plan, kernel._ctx(n, (h, s, d), kv.dtype)))
    parts = []
    for i in range(n):
        ctx = LayerContext(i, n, kv.dtype, (h, s, d), dict(stats[i]) if stats else {})
        parts.append(_encode_layer(kernel, lay, LayerKV(kv[i, 0], kv[i, 1]), ctx))
    return GpuPayloads(torch.cat(parts), lay.offsets)


def _encode_layer(kernel, lay, kv: LayerKV, ctx: LayerContext) -> torch.Tensor:
    codec, p = kernel.codec.tensor, kernel.params
    h, s, d = kv.k.shape
    lp = lay.plan.layers[ctx.layer]
    dev = kv.k.device
    sdt = torch.float16
    lo, hi = lp.sinks, s - lp.recent
    mask, idx = torch.empty(0, dtype=torch.uint8, device=dev), None
    if lp.drop:
        scores, _ = codec._scores(kv, ctx, lo, hi)
        keep = top_up(torch.zeros(lp.body, dtype=torch.bool, device=dev), scores, lp.kept)
        idx = keep.nonzero().squeeze(1).add_(lo)
        full = torch.ones(s, dtype=torch.bool, device=dev)
        full[lo:hi] = keep
        mask = pack(full, 1)
    sections = [torch.frombuffer(bytearray(_PLAN.pack(*lp.header())), dtype=torch.uint8).to(dev), mask]
    channel = codec._key_channel_scales(kv, ctx, sdt) if p["key_scale"] and lp.quantized else None
    for bits, n, parts in ((lp.guard_bits, lp.sinks + lp.recent, ((0, lo), (hi, s))),
                           (lp.body_bits, lp.kept, (idx if idx is not None else (lo, hi),))):
        buf = torch.empty((2, h, n, d), dtype=torch.float32, device=dev)
        for j, t in enumerate((kv.k, kv.v)):
            at = 0
            for part in parts:
                src = t.index_select(1, part) if isinstance(part, torch.Tensor) else t[:, part[0]:part[1]]
                buf[j, :, at:at + src.shape[1]].copy_(src)
                at += src.shape[1]
        if n == 0:
            sections.append(torch.empty(0, dtype=torch.uint8, device=dev))
            continue
        if channel is not None:
            buf[0].div_(channel.float())
        sections.append(_quantize(buf, bits, lay.group, sdt))
    sections.append(_bytes(channel) if channel is not None else torch.empty(0, dtype=torch.uint8, device=dev))
    header = section_header([x.numel() for x in sections])
    return torch.cat([torch.frombuffer(bytearray(header), dtype=torch.uint8).to(dev)] + sections)


def _decode_segment(buf: torch.Tensor, h: int, n: int, d: int, bits: int, group: int,
                    dtype: torch.dtype) -> torch.Tensor:
    n_codes = 2 * h * n * d
    if n == 0:
        return torch.empty((2, h, 0, d), dtype=torch.float32, device=buf.device)
    pb = n_codes if bits == 8 else ((n_codes + 7) // 8) * bits
    ns = n_codes // group * 2
    codes = unpack(buf[:pb], bits, n_codes)
    scale = buf[pb:pb + ns].clone().view(torch.float16)  # clone: a view needs an even byte offset
    zero = buf[pb + ns:].clone().view(torch.float16)
    x = codes.float().view(-1, group)
    x.mul_(scale.float()[:, None]).add_(zero.float()[:, None])
    limit = torch.finfo(dtype).max
    if limit < (2**bits) * torch.finfo(torch.float16).max:
        x.clamp_(-limit, limit)
    return x.view(2, h, n, d)


def decode_eager(kernel, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype):
    n, _, h, s, d = shape
    lay = kernel.layout(n, (h, s, d), dtype)
    layers = []
    limit = torch.finfo(dtype).max
    for i in range(n):
        lp = lay.plan.layers[i]
        buf = payloads.layer(i)
        at = 4 + 8 * 5
        parts = []
        for length in lay.section_lengths[i]:
            parts.append(buf[at:at + length])
            at += length
        _, mask_b, guard_b, body_b, chan_b = parts
        ng = lp.sinks + lp.recent
        positions = None
        if lp.drop:
            keep = unpack(mask_b, 1, mask_b.numel() * 8)[:s].bool()
            positions = keep.nonzero().squeeze(1).to(torch.int64)
        guard = _decode_segment(guard_b, h, ng, d, lp.guard_bits, lay.group, dtype)
        body = _decode_segment(body_b, h, lp.kept, d, lp.body_bits, lay.group, dtype)
        if chan_b.numel():
            channel = chan_b.clone().view(torch.float16).float().view(h, 1, d)
            for seg in (guard, body):
                if seg.shape[2]:
                    seg[0].mul_(channel).clamp_(-limit, limit)
        out = torch.empty((2, h, ng + lp.kept, d), dtype=dtype, device=buf.device)
        out[:, :, :lp.sinks].copy_(guard[:, :, :lp.sinks])
        out[:, :, lp.sinks:lp.sinks + lp.kept].copy_(body)
        out[:, :, lp.sinks + lp.kept:].copy_(guard[:, :, lp.sinks:])
        layers.append(LayerKV(out[0], out[1], positions))
    if lay.dense:
        return torch.stack([torch.stack([x.k, x.v]) for x in layers])
    return layers
