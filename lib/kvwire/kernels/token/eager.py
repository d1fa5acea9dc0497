"""The naive GPU baseline: the CPU codecs' own PyTorch code (``codecs/quant.py``, ``bitpack.py``,
``fp8.py``) run op by op on the device tensors, layer by layer, into the same payload bytes.

This is what "just run the reference on the GPU" costs: a dozen full passes over each tensor
(float copy, abs, max, divide, round, clamp, cast, pack, concatenate) and a host sync per finite
check. ``bench/gpu_codecs.py`` times it beside the fused kernels.
"""

from __future__ import annotations

import torch

from ...codecs import build
from ...codecs.bitpack import pack
from ...codecs.quant import Quantized, dequantize, quantize
from ..launch import header_tensor
from .layout import check_supported, token_layout


def encode_cache_eager(name: str, kv: torch.Tensor) -> torch.Tensor:
    """Same contract as ``kernel.encode_cache`` (default parameters), in eager PyTorch."""
    check_supported(name, None)
    lay = token_layout(name, tuple(kv.shape))
    codec = build(name).tensor
    header = header_tensor(lay.header, str(kv.device))
    payloads = []
    for layer in kv:
        sections = [header]
        for t in (layer[0], layer[1]):
            if name == "fp8_e4m3":
                xf = t.float()
                st = codec.scales(codec.amax(xf))
                q = torch.div(xf, st.float()).to(codec.fp8)
                sections += [q.view(torch.uint8).reshape(-1), st.reshape(-1).view(torch.uint8)]
            elif name == "int8":
                q = quantize(t, 8, dim=-1, symmetric=True, scale_dtype=torch.float16)
                sections += [q.codes.sub(127).reshape(-1), q.scale.reshape(-1).view(torch.uint8)]
            else:
                q = quantize(t, 4, dim=-1, symmetric=False, scale_dtype=torch.float16)
                sections += [pack(q.codes, 4), q.scale.reshape(-1).view(torch.uint8),
                             q.zero.reshape(-1).view(torch.uint8)]
        payloads.append(torch.cat(sections))
    return torch.cat(payloads)


def decode_cache_eager(name: str, payload: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Same contract as ``kernel.decode_cache``, in eager PyTorch."""
    check_supported(name, None)
    lay = token_layout(name, tuple(shape))
    n_layers, _, h, s, d = shape
    off = lay.offsets()
    limit = torch.finfo(dtype).max
    out = torch.empty(shape, dtype=dtype, device=payload.device)
    per_layer = payload.view(n_layers, lay.layer_bytes)
    codec = build(name).tensor
    for i in range(n_layers):
        for j, t in enumerate(("k", "v")):
            codes = per_layer[i, off[f"{t}_codes"]:off[f"{t}_codes"] + lay.codes]
            scale = per_layer[i, off[f"{t}_scales"]:off[f"{t}_scales"] + lay.scale_bytes].view(torch.float16)
            scale = scale.reshape(h, s, 1)
            if name == "fp8_e4m3":
                x = codes.view(codec.fp8).float().reshape(h, s, d) * scale.float()
                out[i, j] = x.clamp_(-limit, limit).to(dtype)
            elif name == "int8":
                x = codes.view(torch.int8).float().reshape(h, s, d) * scale.float()
                out[i, j] = x.clamp_(-limit, limit).to(dtype)
            else:
                zero = per_layer[i, off[f"{t}_zeros"]:off[f"{t}_zeros"] + lay.scale_bytes].view(torch.float16)
                q = torch.stack([codes & 0xF, codes >> 4], dim=-1).reshape(h, s, d)
                out[i, j] = dequantize(Quantized(q, scale, zero.reshape(h, s, 1)), 4, dtype)
    return out
