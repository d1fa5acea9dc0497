"""The eager GPU baseline of low rank: the CPU codec's ``encode_layer`` / ``decode_layer`` ops
(``codecs/svd.py``: ``factorize``, ``reconstruct``, ``quant``) run one by one on the device."""

from __future__ import annotations

import math

import torch

from ...codecs import bitpack, quant
from ...codecs.svd import factorize, reconstruct
from ..base import Decoded, GpuPayloads, Stats, check_cache
from .layout import _quantize_rows, _require_finite


def encode_eager(kernel, kv: torch.Tensor, stats: Stats = None) -> GpuPayloads:
    """The CPU codec's ``encode_layer`` ops on the device, layer by layer, tensor by tensor."""
    n_layers, _, _, _ = check_cache(kv, f"GPU {kernel.name} codec")
    lay = kernel.layout(kv.shape)
    header = torch.frombuffer(bytearray(lay.header), dtype=torch.uint8).to(kv.device)
    parts = []
    for i in range(n_layers):
        _require_finite(kv[i:i + 1], kernel.name)
        sections = [header]
        for t in (kv[i, 0], kv[i, 1]):
            scale, a, b = factorize(t, kernel.params["rank"])
            sections.append(_raw(scale))
            if lay.int4:
                for rows in (a.transpose(1, 2), b):
                    codes, sc = _quantize_rows(rows, lay.group, lay.sdt, 1)
                    sections += [_raw(codes), _raw(sc)]
            else:
                sections += [_raw(a.to(lay.fdt)), _raw(b.to(lay.fdt))]
        parts.append(torch.cat(sections))
    return GpuPayloads.equal_slots(torch.cat(parts), n_layers)


def decode_eager(kernel, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype) -> Decoded:
    """The CPU codec's ``decode_layer`` ops (``reconstruct``, ``dequantize``) on the device."""
    n_layers, _, h, s, d = shape
    lay = kernel.layout(shape)
    out = torch.empty(shape, dtype=dtype, device=payloads.data.device)
    for i in range(n_layers):
        p = payloads.layer(i)
        at = len(lay.header)
        for t in range(2):
            secs = []
            for size in lay.per_tensor:
                secs.append(p[at:at + size].clone())  # aligned copies, as the CPU's tensor_from
                at += size
            scale = secs[0].view(torch.float32).view(h, 2)
            if lay.int4:
                a = _dequantize_rows(secs[1], secs[2], (h, lay.r, s), lay.group, lay.sdt).transpose(1, 2)
                b = _dequantize_rows(secs[3], secs[4], (h, lay.r, d), lay.group, lay.sdt)
            else:
                a = secs[1].view(lay.fdt).view(h, s, lay.r)
                b = secs[2].view(lay.fdt).view(h, lay.r, d)
            out[i, t] = reconstruct(scale, a, b, dtype, kernel.name)
    return out


def _dequantize_rows(packed: torch.Tensor, scales: torch.Tensor, shape: tuple[int, int, int], group: int,
                     sdt: torch.dtype) -> torch.Tensor:
    """``codecs/svd.dequantize_rows`` on the device (no range check: the eager baseline)."""
    h, r, n = shape
    n_groups = math.ceil(n / group)
    codes = bitpack.unpack(packed, 4, h * r * n).view(h, r, n)
    codes = torch.nn.functional.pad(codes, (0, n_groups * group - n), value=quant.levels(4, True))
    q = quant.Quantized(codes.view(h, r, n_groups, group), scales.view(sdt).view(h, r, n_groups, 1), None)
    return quant.dequantize(q, 4, torch.float32, symmetric=True).view(h, r, n_groups * group)[:, :, :n]


def _raw(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)
