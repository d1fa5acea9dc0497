"""fp8_e4m3 / fp8_e5m2: K and V cast to real 8-bit floats after scaling by amax / fp8_max.

Formats from Micikevicius et al., "FP8 Formats for Deep Learning", arXiv 2209.05433 (2022): E4M3
(4 exponent bits, 3 mantissa bits, bias 7, no infinities, max 448, smallest subnormal 2^-9) and
E5M2 (5/2 bits, bias 15, IEEE-like, max 57344, smallest subnormal 2^-16). The bytes on the wire are
``torch.float8_e4m3fn`` / ``torch.float8_e5m2`` values (``x / scale`` cast by torch, round to
nearest even), never integer codes. One scale ``amax / fp8_max`` per ``scaling`` unit:

- ``tensor``: one per K and one per V of the layer (the per-tensor scaling the paper and
  FP8-KV serving stacks use), float32;
- ``head``: one per kv head, float32;
- ``token`` (default): one per (head, token), stored in ``scale_dtype`` (float16 by default): the
  most robust to tokens of very different magnitude (attention sinks), at 2 bytes per (head, token).

Faithful: the formats, amax scaling, RNE casting. Differs: the scale is rounded *up* to its
storage dtype (next representable value), so ``amax / scale <= fp8_max`` always holds and no value
saturates or overflows (E5M2 would produce inf); the decoder multiplies by exactly the stored scale.
The price: when amax / fp8_max is not representable, amax no longer maps exactly onto fp8_max and is
itself rounded (within the bound below), e.g. 1.0 -> 1.00098 with float16 per-token scales.
An all-zero unit gets scale 1. Derived error bound per element, for a value x in a unit with
stored scale s, with ``m`` mantissa bits and smallest subnormal ``sub``::

    |x - x_hat| <= 2^-(m+1) * |x|  +  s * sub / 2     (+ the output dtype's rounding of x_hat)

(RNE is within half a ULP: relative 2^-(m+1) -- 2^-4 for E4M3, 2^-3 for E5M2 -- in the normal
range, at most sub/2 absolute in the subnormal range; multiplying back by s scales both.)

Wire layout (``pack_sections``): ``[k fp8 bytes, k scales, v fp8 bytes, v scales]``; scales shaped
(1, 1, 1) / (kv_heads, 1, 1) float32 or (kv_heads, seq, 1) ``scale_dtype``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import CodecError, WireError
from .base import (LayerContext, LayerKV, Param, TensorCodec, check_layer, pack_sections,
                   require_finite, tensor_bytes, tensor_from, unpack_sections)
from .quant import SCALE_DTYPES
from .registry import register

SCALINGS = ("tensor", "head", "token")
_INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32}


def round_up_to(s: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Positive float64 ``s`` -> the smallest ``dtype`` value >= s (may be inf on overflow)."""
    st = s.to(dtype)
    low = st.double() < s
    if low.any():  # next representable value up: positive floats order like their bit patterns
        st = (st.view(_INT_VIEW[dtype]) + low.to(_INT_VIEW[dtype])).view(dtype)
    return st


class Fp8Codec(TensorCodec):
    """Shared body of the two FP8 formats."""

    fp8: ClassVar[torch.dtype]
    fp8_max: ClassVar[float]
    mantissa_bits: ClassVar[int]
    smallest_subnormal: ClassVar[float]

    PARAMS = {
        "scaling": Param(str, "token", "what shares one scale amax/fp8_max: tensor (per K and V), head "
                         "(per kv head) or token (per head and token)", choices=SCALINGS),
        "scale_dtype": Param(str, "float16", "dtype of per-token scales (tensor/head scales are float32)",
                             choices=tuple(SCALE_DTYPES)),
    }

    @classmethod
    def table(cls) -> torch.Tensor:
        """float32 value of each of the 256 fp8 bit patterns (NaN/Inf codes included)."""
        if "_lut" not in cls.__dict__:
            cls._lut = torch.arange(256, dtype=torch.uint8).view(cls.fp8).float()
        return cls._lut

    def _scale_dtype(self) -> torch.dtype:
        return SCALE_DTYPES[self.params["scale_dtype"]] if self.params["scaling"] == "token" else torch.float32

    def _scale_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        h, s, _ = shape
        return {"tensor": (1, 1, 1), "head": (h, 1, 1), "token": (h, s, 1)}[self.params["scaling"]]

    def amax(self, xf: torch.Tensor) -> torch.Tensor:
        """max |x| per scaling unit of float32 x [heads, seq, head_dim], shaped like the scales."""
        a = xf.abs()
        scaling = self.params["scaling"]
        if scaling == "token":
            return a.amax(dim=-1, keepdim=True)
        if scaling == "head":
            return a.amax(dim=(1, 2), keepdim=True)
        return a.amax().reshape(1, 1, 1)

    def scales(self, amax: torch.Tensor) -> torch.Tensor:
        """Stored scales: amax / fp8_max rounded *up* to the scale dtype (1 where amax is 0)."""
        sdt = self._scale_dtype()
        amax = amax.double()
        s = torch.where(amax > 0, amax / self.fp8_max, torch.ones_like(amax))
        st = round_up_to(s, sdt)
        if not torch.isfinite(st).all():
            raise CodecError(f"codec {self.name!r}: a per-token scale overflows {sdt}; use scale_dtype=float32")
        return st

    def encode_layer(self, kv: LayerKV, ctx: LayerContext) -> bytes:
        check_layer(kv, ctx)
        sections = []
        for t in (kv.k, kv.v):
            xf = t.float()
            amax = self.amax(xf)
            # every element is in one unit and amax propagates NaN/Inf, so this check is complete;
            # require_finite then raises the KVError (and a full isfinite pass is spared)
            if not torch.isfinite(amax).all():
                require_finite(kv, ctx, self.name)
            st = self.scales(amax)
            # st >= amax / fp8_max and division is correctly rounded, so |x / st| <= fp8_max: no clamp
            q = torch.div(xf, st.float()).to(self.fp8)  # not in place: xf *is* t when t is float32
            sections += [tensor_bytes(q.view(torch.uint8)), tensor_bytes(st)]
        return pack_sections(sections)

    def decode_layer(self, payload: bytes, ctx: LayerContext) -> LayerKV:
        sdt = self._scale_dtype()
        parts = unpack_sections(payload, 4, self.name)
        limit = torch.finfo(ctx.dtype).max
        lut = self.table()
        out = []
        for codes_buf, scale_buf in (parts[:2], parts[2:]):
            raw = tensor_from(codes_buf, torch.uint8, ctx.shape)
            st = tensor_from(scale_buf, sdt, self._scale_shape(ctx.shape))
            if not (torch.isfinite(st).all() and (st > 0).all()):
                raise WireError(f"codec {self.name!r}: payload holds a non-positive or non-finite scale")
            # fp8 -> float32 through a 256-entry table made by torch's own cast (exactly the format's
            # values; ~4x faster than .float() on an fp8 tensor on CPU)
            x = lut.index_select(0, raw.reshape(-1).int()).view(ctx.shape)
            if not torch.isfinite(x.sum()):  # |values| <= 57344, so only a NaN/Inf code makes it non-finite
                raise WireError(f"codec {self.name!r}: payload holds a NaN/Inf fp8 code")
            x.mul_(st.float())
            # the scale was rounded up, so fp8_max * scale may pass the output dtype's max: clamp
            out.append(x.clamp_(-limit, limit).to(ctx.dtype))
        return LayerKV(out[0], out[1])


@register
class Fp8E4M3(Fp8Codec):
    name = "fp8_e4m3"
    summary = "real float8 E4M3 (max 448, 3 mantissa bits) after amax scaling per tensor/head/token"
    fp8 = torch.float8_e4m3fn
    fp8_max = 448.0
    mantissa_bits = 3
    smallest_subnormal = 2.0**-9


@register
class Fp8E5M2(Fp8Codec):
    name = "fp8_e5m2"
    summary = "real float8 E5M2 (max 57344, 2 mantissa bits) after amax scaling per tensor/head/token"
    fp8 = torch.float8_e5m2
    fp8_max = 57344.0
    mantissa_bits = 2
    smallest_subnormal = 2.0**-16
