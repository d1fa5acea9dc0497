"""int8: symmetric per-token 8-bit quantization of K and V.

Each token's head_dim vector (per head) gets one scale ``max|x| / 127``; codes are
``round(x / scale)`` clamped to [-127, 127] and stored as int8, one byte each. This is
the round-to-nearest absmax scheme of LLM.int8()-style vector quantization (Dettmers
et al., 2022) applied per token to the cache; KV-specific variants (per channel, per
group, asymmetric) come with the codec suite. Scales are stored in ``scale_dtype``
(float16 by default, as KIVI and most serving stacks do) and codes are computed from
the *stored* scale, so the error bound ``|x - x_hat| <= scale / 2`` holds exactly.
"""

from __future__ import annotations

import torch

from ..errors import CodecError
from .base import (LayerContext, LayerKV, Param, TensorCodec, check_layer, pack_sections,
                   require_finite, tensor_bytes, tensor_from, unpack_sections)
from .registry import register

_SCALE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def quantize_per_token(x: torch.Tensor, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., head_dim] -> (int8 codes, scales [..., 1] in scale_dtype)."""
    xf = x.float()
    scale = (xf.abs().amax(dim=-1, keepdim=True) / 127.0).to(scale_dtype)
    if not torch.isfinite(scale).all():
        raise CodecError(f"int8: a per-token scale overflows {scale_dtype}; use scale_dtype=float32")
    s = scale.float()
    inv = torch.where(s > 0, 1.0 / s, torch.zeros_like(s))
    codes = torch.round(xf * inv).clamp_(-127, 127).to(torch.int8)
    return codes, scale


def dequantize_per_token(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # a scale rounded up in storage can push 127 * scale past fp16's max: clamp, never emit inf
    limit = torch.finfo(dtype).max
    return (codes.float() * scale.float()).clamp_(-limit, limit).to(dtype)


@register
class Int8PerToken(TensorCodec):
    name = "int8"
    summary = "symmetric int8, one scale per token and head"
    PARAMS = {
        "scale_dtype": Param(str, "float16", "dtype of the stored scales", choices=tuple(_SCALE_DTYPES)),
    }

    def encode_layer(self, kv: LayerKV, ctx: LayerContext) -> bytes:
        check_layer(kv, ctx)
        require_finite(kv, ctx, self.name)
        sdt = _SCALE_DTYPES[self.params["scale_dtype"]]
        sections = []
        for t in (kv.k, kv.v):
            codes, scale = quantize_per_token(t, sdt)
            sections += [tensor_bytes(codes), tensor_bytes(scale)]
        return pack_sections(sections)

    def decode_layer(self, payload: bytes, ctx: LayerContext) -> LayerKV:
        sdt = _SCALE_DTYPES[self.params["scale_dtype"]]
        h, s, _ = ctx.shape
        kc, ks, vc, vs = unpack_sections(payload, 4, self.name)
        k = dequantize_per_token(tensor_from(kc, torch.int8, ctx.shape), tensor_from(ks, sdt, (h, s, 1)), ctx.dtype)
        v = dequantize_per_token(tensor_from(vc, torch.int8, ctx.shape), tensor_from(vs, sdt, (h, s, 1)), ctx.dtype)
        return LayerKV(k, v)
