"""The naive GPU baseline of KVQuant: the CPU codec's torch ops (``codecs/kvquant.py``) run one by one
on the device tensors, layer by layer -- the outlier ``topk``, in-place masking, ``amin``/``amax``,
normalization, the NF grid lookup (its tables moved to the device), bit packing -- and the
sections concatenated on the device. On the CPU these are the CPU codec's very operations (same
bytes); on a GPU torch's reductions and ``topk`` order their work differently, so the bytes may
differ where the CPU's do not (near ties): it is a timing baseline, not a reference.
"""

from __future__ import annotations

import functools

import torch

from ... import rope
from ...codecs.kvquant import _nf_coder, n_outliers, select_outliers
from ...codecs.quant import SCALE_DTYPES
from ..base import GpuPayloads, Stats
from ..launch import header_tensor


@functools.lru_cache(maxsize=16)
def _coder(bits: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lv, first, threshold = _nf_coder(bits)
    return lv.to(device), first.to(device), threshold.to(device)


def _raw(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``bitpack.pack`` with its shift tables on the codes' device."""
    flat = codes.reshape(-1)
    pad = (-flat.numel()) % 8
    block = torch.nn.functional.pad(flat.to(torch.int64), (0, pad)).view(-1, 8)
    words = (block << (torch.arange(8, dtype=torch.int64, device=flat.device) * bits)).sum(dim=1)
    shifts = torch.arange(bits, dtype=torch.int64, device=flat.device) * 8
    return ((words.unsqueeze(1) >> shifts) & 0xFF).to(torch.uint8).reshape(-1)


def _unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    groups = packed.to(torch.int64).view(-1, bits)
    words = (groups << (torch.arange(bits, dtype=torch.int64, device=packed.device) * 8)).sum(dim=1)
    shifts = torch.arange(8, dtype=torch.int64, device=packed.device) * bits
    codes = (words.unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1)[:n]


def _encode_tensor(x: torch.Tensor, red: int, bits: int, params: dict, dtype: torch.dtype) -> list[torch.Tensor]:
    sdt = SCALE_DTYPES[params["scale_dtype"]]
    dev = x.device
    xf = x.to(torch.float32, copy=True)
    idx = select_outliers(xf, red, n_outliers(xf.numel(), params["outlier_fraction"])).to(dev)
    flat = xf.view(-1)
    has_out = idx.numel() > 0
    if has_out:
        flat[idx] = float("inf")
    lo = xf.amin(dim=red, keepdim=True)
    if has_out:
        flat[idx] = float("-inf")
    hi = xf.amax(dim=red, keepdim=True)
    empty = lo > hi
    lo = lo.masked_fill(empty, 0.0)
    hi = hi.masked_fill(empty, 0.0)
    offset = (hi * 0.5 + lo * 0.5).to(sdt)
    rng = (hi * 0.5 - lo * 0.5).to(sdt)
    r = rng.float()
    inv = torch.where(r > 0, 1.0 / r, torch.zeros_like(r))
    xn = xf.sub_(offset.float()).mul_(inv).clamp_(-1.0, 1.0)
    if has_out:
        flat[idx] = 0.0
    _, first, threshold = _coder(bits, str(dev))
    grid = (xn.reshape(-1) + 1.0).mul_(128).clamp_(0, 255).to(torch.int32)
    above = torch.gt(xn.reshape(-1), threshold.index_select(0, grid))
    codes = first.index_select(0, grid).add_(above.view(torch.uint8))
    return [_pack(codes, bits), _raw(offset), _raw(rng), torch.empty(0, dtype=torch.uint8, device=dev),
            _raw(x.reshape(-1)[idx].to(dtype)), _raw(idx.to(torch.int32))]


def encode_eager(kernel, kv: torch.Tensor, stats: Stats = None) -> GpuPayloads:
    """Every layer's payload, the CPU codec's ops on the device (RoPE tables too: device cos/sin)."""
    params, bits = kernel.params, kernel.bits
    n_layers, _, h, s, d = kv.shape
    dev = kv.device
    starts = kernel._starts(kv.shape)
    plan = kernel._rope_plan(stats, n_layers, s, d, "cpu", starts) if params["pre_rope"] else None
    lay = kernel.layout(tuple(kv.shape), kv.dtype, plan.n_freq if plan else 0)
    header = header_tensor(lay.header, str(dev))
    layers = []
    for i in range(n_layers):
        keys, tail = kv[i, 0], []
        if plan is not None:
            table = plan.table_bytes[i].view(torch.float32)  # on the host (the plan was made for "cpu")
            keys = rope.rotate(kv[i, 0], torch.arange(s, device=dev) + starts[i], table[:-1].to(dev),
                               float(table[-1]), inverse=True)
            tail = [_raw(table.to(dev))]
        parts = [header] + _encode_tensor(keys, 1, bits, params, kv.dtype) + \
            _encode_tensor(kv[i, 1], 2, bits, params, kv.dtype) + tail
        layers.append(torch.cat(parts))
    return GpuPayloads(torch.cat(layers), tuple(i * lay.layer_bytes for i in range(n_layers + 1)))


def _decode_tensor(p: torch.Tensor, lay, t: str, red: int, bits: int, sdt, dtype, out_dtype) -> torch.Tensor:
    h, s, d = lay.heads, lay.seq, lay.dim
    o = lay.offsets
    n = h * s * d
    nvec = (h, 1, d) if red == 1 else (h, s, 1)
    codes = _unpack(p[o[f"{t}_codes"]:o[f"{t}_codes"] + (n // 8) * bits], bits, n)
    scale_n = nvec[0] * nvec[1] * nvec[2] * lay.scale_bytes
    offset = p[o[f"{t}_offs"]:o[f"{t}_offs"] + scale_n].clone().view(sdt).view(nvec).float()
    rng = p[o[f"{t}_rng"]:o[f"{t}_rng"] + scale_n].clone().view(sdt).view(nvec).float()
    lv = _coder(bits, str(p.device))[0]
    xn = lv.index_select(0, codes).view(h, s, d)
    limit = torch.finfo(dtype).max
    out = torch.addcmul(offset, xn, rng).clamp_(-limit, limit).to(out_dtype)
    if lay.count:
        vals = p[o[f"{t}_vals"]:o[f"{t}_vals"] + lay.count * lay.value_bytes].clone().view(dtype)
        idx = p[o[f"{t}_idx"]:o[f"{t}_idx"] + 4 * lay.count].clone().view(torch.int32).long()
        out.view(-1)[idx] = vals.to(out_dtype)
    return out


def decode_eager(kernel, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The CPU codec's ``decode_layer`` ops on the device, layer by layer, into one dense cache."""
    lay = kernel._decode_layout(payloads, shape, dtype)
    n_layers, _, h, s, d = shape
    sdt = SCALE_DTYPES[kernel.params["scale_dtype"]]
    pre = bool(kernel.params["pre_rope"])
    starts = kernel._starts(shape)
    out = torch.empty(shape, dtype=dtype, device=payloads.data.device)
    for i in range(n_layers):
        p = payloads.layer(i)
        k = _decode_tensor(p, lay, "k", 1, kernel.bits, sdt, dtype, torch.float32 if pre else dtype)
        if pre:
            table = p[lay.offsets["table"]:].clone().view(torch.float32)
            limit = torch.finfo(dtype).max
            k = rope.rotate(k, torch.arange(s, device=p.device) + starts[i], table[:-1],
                            float(table[-1])).clamp_(-limit, limit)
        out[i, 0] = k.to(dtype)
        out[i, 1] = _decode_tensor(p, lay, "v", 2, kernel.bits, sdt, dtype, dtype)
    return out
