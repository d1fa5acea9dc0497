"""The naive GPU baseline of ``cachegen``'s quantization part: the CPU codec's own torch code
(``CacheGen._encode_tensor`` / ``_decode_tensor`` with ``codecs/quant.py``) run op by op on the
device tensors, tensor by tensor, into the same symbols (and, for ``entropy="none"``, the same
bit-packed payload bytes, packed by device torch ops with ``bitpack.pack``'s arithmetic). The
entropy stage is the same host code as the kernels' (``CacheGenKernel.host_encode``).
"""

from __future__ import annotations

import torch

from ...codecs import quant
from ...codecs.base import section_header
from ...codecs.cachegen import _MODE_PACKED
from ..base import GpuPayloads
from ..bytepack import pack, unpack
from .layout import CacheGenSymbols


def encode_symbols_eager(kernel, kv: torch.Tensor):
    n, h, s, d, c, nc, nd = kernel._dims(tuple(kv.shape))
    p = kernel.params
    sdt = torch.float16
    dev = kv.device
    a_codes = torch.empty((n, 2, h, nc, d), dtype=torch.uint8, device=dev)
    d_codes = torch.empty((n, 2, h, d, nd), dtype=torch.uint8, device=dev)
    scales = torch.zeros((3, n, 2, h, d), dtype=sdt, device=dev)
    tiers = kernel._tiers(tuple(kv.shape))
    for i in range(n):
        bits = kernel._bits(tiers[i])
        for j in range(2):
            x = torch.nn.functional.pad(kv[i, j].float(), (0, 0, 0, nc * c - s)).view(h, nc, c, d)
            anchors = quant.quantize(x[:, :, 0, :], p["anchor_bits"], dim=1, symmetric=False, scale_dtype=sdt)
            a_hat = quant.dequantize(anchors, p["anchor_bits"], torch.float32)
            a_codes[i, j] = anchors.codes
            scales[0, i, j] = anchors.scale.view(h, d)
            scales[1, i, j] = anchors.zero.view(h, d)
            if nd == 0:
                continue
            delta = x[:, :, 1:, :] - a_hat.unsqueeze(2)
            pad = nc * c - s
            if pad:
                delta[:, -1, c - 1 - pad:, :] = 0.0
            delta = delta.permute(0, 3, 1, 2).reshape(h, d, -1)
            q = quant.quantize(delta, bits, dim=-1, symmetric=True, scale_dtype=sdt)
            d_codes[i, j] = q.codes[:, :, :nd]
            scales[2, i, j] = q.scale.view(h, d)
    return CacheGenSymbols(tuple(kv.shape), a_codes, scales[0], scales[1], d_codes, scales[2])


def encode_packed_eager(kernel, kv: torch.Tensor) -> GpuPayloads:
    """``entropy="none"`` payloads from the eager symbols, every stream bit-packed on the device."""
    sym = encode_symbols_eager(kernel, kv)
    n, nd = kv.shape[0], kernel._dims(tuple(kv.shape))[-1]
    dev = kv.device
    mode = torch.tensor([_MODE_PACKED], dtype=torch.uint8, device=dev)
    layers = []
    tiers = kernel._tiers(tuple(kv.shape))
    for i in range(n):
        bits = kernel._bits(tiers[i])
        sections = []
        for j in range(2):
            sections += [sym.anchor_scale[i, j].reshape(-1).view(torch.uint8),
                         sym.anchor_zero[i, j].reshape(-1).view(torch.uint8),
                         torch.cat([mode, pack(sym.anchor_codes[i, j], kernel.params["anchor_bits"])])]
            if nd == 0:
                sections += [torch.empty(0, dtype=torch.uint8, device=dev), mode]
            else:
                sections += [sym.delta_scale[i, j].reshape(-1).view(torch.uint8),
                             torch.cat([mode, pack(sym.delta_codes[i, j], bits)])]
        header = section_header([x.numel() for x in sections])
        layers.append(torch.cat([torch.frombuffer(bytearray(header), dtype=torch.uint8).to(dev)] + sections))
    offsets = [0]
    for x in layers:
        offsets.append(offsets[-1] + x.numel())
    return GpuPayloads(torch.cat(layers), tuple(offsets))


def decode_symbols_eager(kernel, sym, dtype: torch.dtype) -> torch.Tensor:
    """``CacheGen._decode_tensor``'s torch ops on the device symbols."""
    n, h, s, d, c, nc, nd = kernel._dims(sym.shape)
    p = kernel.params
    limit = torch.finfo(dtype).max
    out = torch.empty(sym.shape, dtype=dtype, device=sym.anchor_codes.device)
    tiers = kernel._tiers(sym.shape)
    for i in range(n):
        bits = kernel._bits(tiers[i])
        qmax = quant.levels(bits, True)
        for j in range(2):
            anchors = quant.Quantized(sym.anchor_codes[i, j], sym.anchor_scale[i, j].view(h, 1, d),
                                      sym.anchor_zero[i, j].view(h, 1, d))
            a_hat = quant.dequantize(anchors, p["anchor_bits"], torch.float32)
            if nd == 0:
                out[i, j] = a_hat.clamp_(-limit, limit).to(dtype)
                continue
            codes = torch.nn.functional.pad(sym.delta_codes[i, j], (0, nc * (c - 1) - nd), value=qmax)
            q = quant.Quantized(codes, sym.delta_scale[i, j].view(h, d, 1), None)
            delta = quant.dequantize(q, bits, torch.float32, symmetric=True)
            delta = delta.view(h, d, nc, c - 1).permute(0, 2, 3, 1)
            base = a_hat.unsqueeze(2)
            x = torch.cat((base, base + delta), dim=2).view(h, nc * c, d)[:, :s]
            out[i, j] = x.clamp_(-limit, limit).to(dtype)
    return out


def decode_packed_eager(kernel, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """``entropy="none"`` payloads: streams unpacked by device torch ops, then ``decode_symbols_eager``."""
    n, h, _, d, _, nc, nd = kernel._dims(shape)
    lay = kernel._layout(shape)
    data = payloads.data
    dev = data.device
    a_codes = torch.empty((n, 2, h, nc, d), dtype=torch.uint8, device=dev)
    d_codes = torch.empty((n, 2, h, d, nd), dtype=torch.uint8, device=dev)
    scales = torch.zeros((3, n, 2, h, d), dtype=torch.float16, device=dev)
    tiers = kernel._tiers(shape)
    for i in range(n):
        bits = kernel._bits(tiers[i])
        row = lay.sections[i]
        ends = list(row[1:]) + [lay.offsets[i + 1]]
        for j in range(2):
            sec = [data[int(a):int(b)] for a, b in zip(row[5 * j:5 * j + 5], ends[5 * j:5 * j + 5])]
            scales[0, i, j] = sec[0].clone().view(torch.float16).view(h, d)
            scales[1, i, j] = sec[1].clone().view(torch.float16).view(h, d)
            a_codes[i, j] = unpack(sec[2][1:], kernel.params["anchor_bits"], h * nc * d).view(h, nc, d)
            if nd:
                scales[2, i, j] = sec[3].clone().view(torch.float16).view(h, d)
                d_codes[i, j] = unpack(sec[4][1:], bits, h * d * nd).view(h, d, nd)
    sym = CacheGenSymbols(shape, a_codes, scales[0], scales[1], d_codes, scales[2])
    return decode_symbols_eager(kernel, sym, dtype)
