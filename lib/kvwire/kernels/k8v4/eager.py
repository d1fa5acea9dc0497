"""The eager GPU baseline of ``k8v4``: the CPU codec's torch ops (``codecs/k8v4.py``, ``codecs/quant.py``,
``bitpack.py``) run one by one on the device, layer by layer."""

from __future__ import annotations

import torch

from ...codecs.bitpack import pack
from ...codecs.int8 import group_view
from ...codecs.quant import SCALE_DTYPES, Quantized, dequantize, quantize
from ...errors import CodecError
from ..base import GpuPayloads, Stats, check_cache
from ..launch import header_tensor
from ..wordpack import as_dtype, device_bytes, refuse_nonfinite, unpack_on_device


def _groups(kernel) -> tuple[tuple[str, int], tuple[str, int]]:
    p = kernel.params
    return ((p["key_granularity"], p["key_group_size"]), (p["value_granularity"], p["value_group_size"]))


def encode_eager(kernel, kv: torch.Tensor, stats: Stats = None) -> GpuPayloads:
    n = check_cache(kv)[0]
    lay = kernel.layout(tuple(kv.shape), kv.dtype)
    sdt = SCALE_DTYPES[kernel.params["scale_dtype"]]
    (kgran, kg), (vgran, vg) = _groups(kernel)
    header = header_tensor(lay.header, str(kv.device))
    parts = []
    for layer in kv:
        kview, kdim = group_view(layer[0], kgran, kg)
        vview, vdim = group_view(layer[1], vgran, vg)
        try:
            qk = quantize(kview, 8, dim=kdim, symmetric=True, scale_dtype=sdt)
            qv = quantize(vview, 4, dim=vdim, symmetric=False, scale_dtype=sdt)
        except CodecError:  # as the CPU codec: NaN/Inf in the layer (KVError), else a scale overflow
            refuse_nonfinite(kernel.name, layer, sdt)
        parts += [header, qk.codes.sub_(127).reshape(-1), device_bytes(qk.scale), pack(qv.codes, 4),
                  device_bytes(qv.scale), device_bytes(qv.zero)]
    return GpuPayloads.equal_slots(torch.cat(parts), n)


def decode_eager(kernel, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    n, _, h, s, d = shape
    lay = kernel.layout(tuple(shape), dtype)
    sdt = SCALE_DTYPES[kernel.params["scale_dtype"]]
    off, sizes = lay.offsets(), lay.sections
    names = ("k_codes", "k_scales", "v_codes", "v_scales", "v_zeros")
    kshape, vshape = (h, s, d // lay.key_group, lay.key_group), (h, s, d // lay.value_group, lay.value_group)
    limit = torch.finfo(dtype).max
    out = torch.empty(shape, dtype=dtype, device=payloads.data.device)
    for i in range(n):
        raw = payloads.layer(i)
        sec = {name: raw[off[name]:off[name] + size] for name, size in zip(names, sizes)}
        codes = sec["k_codes"].view(torch.int8).reshape(kshape)
        scale = as_dtype(sec["k_scales"], sdt, kshape[:3] + (1,))
        out[i, 0] = (codes.float() * scale.float()).clamp_(-limit, limit).to(dtype).reshape(h, s, d)
        scale, zero = (as_dtype(sec[f"v_{x}"], sdt, vshape[:3] + (1,)) for x in ("scales", "zeros"))
        q = Quantized(unpack_on_device(sec["v_codes"], 4, h * s * d).reshape(vshape), scale, zero)
        out[i, 1] = dequantize(q, 4, dtype).reshape(h, s, d)
    return out
