"""k8v4: mixed precision -- keys uniform int8, values uniform int4 (bit-packed two per byte).

Keys are the more quantization-sensitive half of the cache: KIVI (Liu et al., "KIVI: A Tuning-Free
Asymmetric 2bit Quantization for KV Cache", ICML 2024, arXiv 2402.02750) finds that keys carry a
few large-magnitude *channels* while values do not, and KVQuant (Hooper et al., "KVQuant: Towards
10 Million Context Length LLM Inference with KV Cache Quantization", NeurIPS 2024, arXiv 2401.18079)
likewise reports outlier channels in keys and not in values, and quantizes keys differently (per
channel, before RoPE) for that reason. Spending more bits on keys than on values follows from that
asymmetry; this codec does it in the simplest form: 8 bits for K, 4 bits for V, i.e. 6 bits per
element on average plus scales (ratio 2.51 against bf16 at head_dim 64 with per-token scales: int8 1.94, int4 3.56).

The quantizer is the one ``int8`` and ``int4`` use (standard uniform round-to-nearest, Jacob et al.,
CVPR 2018, arXiv 1712.05877; ``codecs/quant.py``): keys symmetric absmax (``scale = max|x| / 127``,
codes -127..127, int8's default), values asymmetric min-max (``scale = (max - min) / 15``,
``zero = min``, codes 0..15, int4's default). Each half has its own ``granularity``: ``token`` (per
head and token over head_dim, the default for both), ``channel`` (per head and channel over the
sequence -- KIVI's choice for keys) or ``group`` (``*_group_size`` consecutive head_dim elements of
one token; must divide head_dim).

Faithful: round-to-nearest uniform quantization, absmax / min-max ranges, fp16 scales and zero
points by default. Differs from KIVI / KVQuant: no full-precision residual window, no token
grouping along the sequence for per-channel keys, no non-uniform datatypes or dense-and-sparse
outlier split (those are the ``kivi*`` / ``kvquant`` codecs); the K/V bit split is fixed at 8/4 and
is this project's simple reading of the asymmetry, not a scheme from either paper. Scales and zero
points are rounded to ``scale_dtype`` *before* codes are computed so the decoder uses exactly what
the encoder did.

Wire layout (``pack_sections``, 5 sections): ``[k codes, k scales, v codes, v scales, v zeros]``.
Key codes are signed int8 (one byte each, -128 never emitted and refused on decode); value codes are
``bitpack.pack(codes, 4)``, ``ceil(numel / 8) * 4`` bytes. Scales/zeros are ``scale_dtype`` shaped
(kv_heads, seq, 1) for token, (kv_heads, 1, head_dim) for channel and
(kv_heads, seq, head_dim / group_size, 1) for group. So the payload is exactly the bytes of an int8
key half plus an int4 value half plus the 44-byte section table. Error bound per element:
keys ``|x - x_hat| <= scale_k / 2``, values ``|x - x_hat| <= scale_v / 2``, each plus the storage
rounding of scale and zero point and the output dtype's rounding (tested in
``tests/test_hybrid_codecs.py``).
"""

from __future__ import annotations

import torch

from ..errors import CodecError, WireError
from ..limits import MAX_HEAD_DIM
from .base import (LayerContext, LayerKV, Param, TensorCodec, check_layer, pack_sections, require_finite,
                   tensor_bytes, tensor_from, unpack_sections)
from .bitpack import pack, packed_size, unpack
from .int8 import GRANULARITIES, dequantize_per_token, group_view, scale_shape
from .quant import SCALE_DTYPES, Quantized, dequantize, quantize
from .registry import register

KEY_BITS, VALUE_BITS = 8, 4


@register
class K8V4(TensorCodec):
    name = "k8v4"
    summary = "mixed precision: keys int8 (symmetric), values int4 packed 2/byte (min-max); per token by default"
    PARAMS = {
        "key_granularity": Param(str, "token", "what shares one key scale: token, channel or group",
                                 choices=GRANULARITIES),
        "key_group_size": Param(int, 64, "head_dim elements per key group (key_granularity=group only; must "
                                "divide head_dim)", minimum=1, maximum=MAX_HEAD_DIM),
        "value_granularity": Param(str, "token", "what shares one value scale/zero: token, channel or group",
                                   choices=GRANULARITIES),
        "value_group_size": Param(int, 32, "head_dim elements per value group (value_granularity=group only; "
                                  "must divide head_dim)", minimum=1, maximum=MAX_HEAD_DIM),
        "scale_dtype": Param(str, "float16", "dtype of the stored scales and zero points",
                             choices=tuple(SCALE_DTYPES)),
    }

    def _layout(self, half: str) -> tuple[str, int]:
        return self._params[f"{half}_granularity"], self._params[f"{half}_group_size"]

    def _check_groups(self, head_dim: int, err: type[Exception]) -> None:
        for half in ("key", "value"):
            gran, g = self._layout(half)
            if gran == "group" and head_dim % g:
                raise err(f"codec {self.name!r}: head_dim {head_dim} is not a multiple of {half}_group_size {g}; "
                          f"set {half}_group_size to a divisor of {head_dim} or use {half}_granularity='token'")

    def encode_layer(self, kv: LayerKV, ctx: LayerContext) -> bytes:
        check_layer(kv, ctx)
        self._check_groups(kv.k.shape[-1], CodecError)
        sdt = SCALE_DTYPES[self._params["scale_dtype"]]
        try:
            view, dim = group_view(kv.k, *self._layout("key"))
            qk = quantize(view, KEY_BITS, dim=dim, symmetric=True, scale_dtype=sdt)
            view, dim = group_view(kv.v, *self._layout("value"))
            qv = quantize(view, VALUE_BITS, dim=dim, symmetric=False, scale_dtype=sdt)
        except CodecError as exc:
            # NaN/Inf propagate through every group's amax/amin, so they always land here (as in int8):
            # require_finite raises the KVError; otherwise a finite scale/zero overflowed scale_dtype
            require_finite(kv, ctx, self.name)
            raise CodecError(f"codec {self.name!r}: {exc}") from exc
        # quant's symmetric 8-bit codes are 0..254 (offset 127): uint8 - 127 wraps to int8 -127..127
        k_codes = qk.codes.sub_(127).view(torch.int8)
        return pack_sections([tensor_bytes(k_codes), tensor_bytes(qk.scale),
                              tensor_bytes(pack(qv.codes, VALUE_BITS)), tensor_bytes(qv.scale),
                              tensor_bytes(qv.zero)])

    def decode_layer(self, payload: bytes, ctx: LayerContext) -> LayerKV:
        h, s, d = ctx.shape
        self._check_groups(d, WireError)
        sdt = SCALE_DTYPES[self._params["scale_dtype"]]
        kc, ks, vc, vs, vz = unpack_sections(payload, 5, self.name)
        out = []
        for half in ("key", "value"):
            gran, g = self._layout(half)
            vshape = (h, s, d // g, g) if gran == "group" else (h, s, d)
            sshape = scale_shape(ctx.shape, gran, g)
            if half == "key":
                codes = tensor_from(kc, torch.int8, vshape)
                scale = tensor_from(ks, sdt, sshape)
                self._check_finite(scale, "scale")
                if codes.numel() and int(codes.min()) == -128:
                    raise WireError(f"codec {self.name!r}: payload holds a key code outside -127..127")
                x = dequantize_per_token(codes, scale, ctx.dtype)
            else:
                n = h * s * d
                packed = tensor_from(vc, torch.uint8, (packed_size(n, VALUE_BITS),))
                codes = unpack(packed, VALUE_BITS, n).reshape(vshape)
                scale, zero = tensor_from(vs, sdt, sshape), tensor_from(vz, sdt, sshape)
                self._check_finite(scale, "scale")
                self._check_finite(zero, "zero point")
                x = dequantize(Quantized(codes, scale, zero), VALUE_BITS, ctx.dtype)
            out.append(x.reshape(h, s, d))
        return LayerKV(out[0], out[1])

    def _check_finite(self, t: torch.Tensor, what: str) -> None:
        if not torch.isfinite(t).all():
            raise WireError(f"codec {self.name!r}: payload holds a non-finite {what}")
