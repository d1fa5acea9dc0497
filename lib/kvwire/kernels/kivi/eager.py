"""The eager GPU baseline of ``kivi2`` / ``kivi4``: the CPU codec's torch ops (``codecs/kivi.py``,
``codecs/quant.py``, ``bitpack.py``) run one by one on the device, layer by layer."""

from __future__ import annotations

import torch

from ...codecs import LayerKV
from ...codecs.base import LayerContext, require_finite
from ...codecs.bitpack import pack
from ...codecs.quant import SCALE_DTYPES, Quantized, dequantize, quantize
from ...errors import CodecError
from ..base import GpuPayloads, Stats, check_cache
from ..launch import header_tensor
from ..wordpack import as_dtype, device_bytes, unpack_on_device


def encode_eager(kernel, kv: torch.Tensor, stats: Stats = None) -> GpuPayloads:
    n, h, _, d = check_cache(kv)
    lay = kernel.layout(tuple(kv.shape), kv.dtype)
    g, bits, vg, n_k, n_v = lay.group, kernel.bits, lay.value_group, lay.n_k, lay.n_v
    sdt = SCALE_DTYPES[kernel.params["scale_dtype"]]
    header = header_tensor(lay.header, str(kv.device))
    parts = []
    for i, layer in enumerate(kv):
        k, v = layer[0], layer[1]
        require_finite(LayerKV(k, v), LayerContext(i, n, kv.dtype, (h, lay.seq, d)), kernel.name)  # as the CPU
        try:
            qk = quantize(k[:, :n_k].reshape(h, n_k // g, g, d), bits, dim=2, scale_dtype=sdt)
            qv = quantize(v[:, :n_v].reshape(h, n_v, d // vg, vg), bits, dim=3, scale_dtype=sdt)
        except CodecError as exc:
            raise CodecError(f"codec {kernel.name!r}: {exc}") from exc
        parts.append(header)
        for q, rest in ((qk, k[:, n_k:]), (qv, v[:, n_v:])):
            parts += [pack(q.codes, bits), device_bytes(q.scale), device_bytes(q.zero), device_bytes(rest)]
    return GpuPayloads.equal_slots(torch.cat(parts), n)


def decode_eager(kernel, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    n, _, h, s, d = shape
    lay = kernel.layout(tuple(shape), dtype)
    g, bits, vg, n_k, n_v = lay.group, kernel.bits, lay.value_group, lay.n_k, lay.n_v
    sdt = SCALE_DTYPES[kernel.params["scale_dtype"]]
    sizes, offs = lay.sections, lay.offsets()
    names = [f"{t}_{x}" for t in "kv" for x in ("codes", "scales", "zeros", "residual")]
    out = torch.empty(shape, dtype=dtype, device=payloads.data.device)
    for i in range(n):
        raw = payloads.layer(i)
        sec = {name: raw[offs[name]:offs[name] + size] for name, size in zip(names, sizes)}
        for j, (t, n_q, qshape, sshape) in enumerate((("k", n_k, (h, n_k // g, g, d), (h, n_k // g, 1, d)),
                                                      ("v", n_v, (h, n_v, d // vg, vg), (h, n_v, d // vg, 1)))):
            codes = unpack_on_device(sec[f"{t}_codes"], bits, h * n_q * d).reshape(qshape)
            scale, zero = (as_dtype(sec[f"{t}_{x}"], sdt, sshape) for x in ("scales", "zeros"))
            q = Quantized(codes, scale, zero)
            out[i, j, :, :n_q] = dequantize(q, bits, dtype).reshape(h, n_q, d)
            out[i, j, :, n_q:] = as_dtype(sec[f"{t}_residual"], dtype, (h, s - n_q, d))
    return out
