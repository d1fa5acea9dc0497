"""The eager GPU baseline of the granular kernels: the CPU codecs' torch ops (``codecs/quant.py``,
``int8.py``, ``fp8.py``, ``bitpack.py``) run one by one on the device tensors, layer by layer, into the
same payload bytes. ``_UniformKernel`` takes the int8 / int4 sections, ``Fp8E5M2Kernel`` the FP8 ones
(its ``_eager_sections`` / ``_eager_decode``)."""

from __future__ import annotations

import torch

from ...codecs.bitpack import pack
from ...codecs.int8 import dequantize_per_token, group_view, scale_shape
from ...codecs.quant import SCALE_DTYPES, Quantized, dequantize, quantize
from ..base import GpuPayloads, Stats, check_cache
from ..launch import header_tensor
from ..layout import TokenLayout
from .layout import Scheme


def encode_eager(kernel, kv: torch.Tensor, stats: Stats = None) -> GpuPayloads:
    n, h, s, d = check_cache(kv, f"GPU {kernel.name} kernels")
    sch = kernel.scheme(d)
    header = header_tensor(sch.layout(tuple(kv.shape)).header, str(kv.device))
    layers = []
    for layer in kv:
        parts = [header]
        for t in (layer[0], layer[1]):
            parts += kernel._eager_sections(t, sch)
        layers.append(torch.cat(parts))
    return GpuPayloads.equal_slots(torch.cat(layers), n)


def quant_sections(kernel, t: torch.Tensor, sch: Scheme) -> list[torch.Tensor]:
    p = kernel.full_params()
    view, dim = group_view(t, p["granularity"], p["group_size"])
    q = quantize(view, sch.bits, dim=dim, symmetric=sch.symmetric, scale_dtype=SCALE_DTYPES[sch.scale_dtype])
    codes = q.codes.sub(127) if sch.bits == 8 and sch.symmetric else q.codes  # uint8 wraps: signed int8 bytes
    out = [codes.reshape(-1) if sch.bits == 8 else pack(codes, 4), _bytes(q.scale)]
    return out + ([] if sch.symmetric else [_bytes(q.zero)])


def decode_eager(kernel, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    n, _, h, s, d = shape
    sch = kernel.scheme(d)
    lay = sch.layout(tuple(shape))
    off = lay.offsets()
    per_layer = payloads.data.view(n, lay.layer_bytes)
    out = torch.empty(tuple(shape), dtype=dtype, device=payloads.data.device)
    for i in range(n):
        for j, t in enumerate(("k", "v")):
            def sec(what: str, size: int) -> torch.Tensor:
                return per_layer[i, off[f"{t}_{what}"]:off[f"{t}_{what}"] + size]

            out[i, j] = kernel._eager_decode(sec, lay, sch, (h, s, d), dtype)
    return out


def quant_decode(kernel, sec, lay: TokenLayout, sch: Scheme, shape3, dtype) -> torch.Tensor:
    p = kernel.full_params()
    h, s, d = shape3
    sdt = SCALE_DTYPES[sch.scale_dtype]
    sshape = scale_shape(shape3, p["granularity"], p["group_size"])
    vshape = (h, s, d // p["group_size"], p["group_size"]) if p["granularity"] == "group" else (h, s, d)
    raw = sec("codes", lay.codes)
    scale = _as(sec("scales", lay.scale_bytes), sdt).reshape(sshape)
    if sch.bits == 8 and sch.symmetric:
        return dequantize_per_token(raw.view(torch.int8).reshape(vshape), scale, dtype).reshape(shape3)
    # (bitpack.unpack builds its shifts on the host: unpacked here, as kernels/token/eager.py does)
    codes = raw if sch.bits == 8 else torch.stack([raw & 0xF, raw >> 4], dim=-1).reshape(-1)[:h * s * d]
    zero = None if sch.symmetric else _as(sec("zeros", lay.scale_bytes), sdt).reshape(sshape)
    x = dequantize(Quantized(codes.reshape(vshape), scale, zero), sch.bits, dtype, symmetric=sch.symmetric)
    return x.reshape(shape3)


def fp8_sections(kernel, t: torch.Tensor, sch: Scheme) -> list[torch.Tensor]:
    codec = kernel.codec.tensor
    xf = t.float()
    st = codec.scales(codec.amax(xf))
    return [torch.div(xf, st.float()).to(codec.fp8).view(torch.uint8).reshape(-1), _bytes(st)]


def fp8_decode(kernel, sec, lay: TokenLayout, sch: Scheme, shape3, dtype) -> torch.Tensor:
    h, s, d = shape3
    st = _as(sec("scales", lay.scale_bytes), torch.float16).reshape(h, s, 1)
    x = sec("codes", lay.codes).view(kernel.codec.tensor.fp8).float().reshape(shape3) * st.float()
    limit = torch.finfo(dtype).max
    return x.clamp_(-limit, limit).to(dtype)


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _as(raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Payload bytes as ``dtype`` values (copied first where they sit off the dtype's alignment)."""
    if raw.data_ptr() % dtype.itemsize:
        raw = raw.clone()
    return raw.view(dtype)
