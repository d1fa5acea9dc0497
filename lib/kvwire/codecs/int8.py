"""int8: uniform 8-bit round-to-nearest quantization of K and V (per token, per channel or per group).

The scheme is standard uniform affine quantization (Jacob et al., "Quantization and Training of
Neural Networks for Efficient Integer-Arithmetic-Only Inference", CVPR 2018, arXiv 1712.05877):
symmetric absmax (``scale = max|x| / 127``, ``code = round(x / scale)``) or asymmetric min-max
(``scale = (max - min) / 255``, ``zero = min``), computed by ``codecs/quant.py``. What is grouped
under one scale is the ``granularity``:

- ``token`` (default): one scale per (head, token) over head_dim -- LLM.int8()-style vector-wise
  absmax (Dettmers et al., NeurIPS 2022, arXiv 2208.07339) applied to the cache;
- ``channel``: one scale per (head, channel) over the whole sequence. KIVI (Liu et al., "KIVI: A
  Tuning-Free Asymmetric 2bit Quantization for KV Cache", ICML 2024, arXiv 2402.02750) observes
  that keys have a few large *channels*, so per-channel scales suit keys and per-token scales suit
  values. Here one granularity applies to both K and V (KIVI's split, its residual fp16 window and
  its token grouping along the sequence are not reproduced: that is the ``kivi`` codecs' job);
- ``group``: groups of ``group_size`` consecutive elements along head_dim within one token
  (head_dim must be a multiple of ``group_size``; e.g. stories260K's head_dim is 8).

Faithful: round-to-nearest, absmax / min-max ranges, fp16 scales by default (as KIVI and most
serving stacks store them). Differs: scales and zero points are rounded to ``scale_dtype`` *before*
codes are computed so the decoder sees exactly what the encoder used; symmetric codes use the
balanced range -127..127 (code -128 is never emitted and is refused on decode).

Wire layout (``pack_sections``): symmetric ``[k codes, k scales, v codes, v scales]``, asymmetric
``[k codes, k scales, k zeros, v codes, v scales, v zeros]``. 8-bit symmetric codes are signed int8
(one byte each, the layout this codec has always had, so the default -- token, symmetric, float16 --
is byte-for-byte unchanged); asymmetric codes are uint8 0..255. Scales/zeros are ``scale_dtype``
shaped (kv_heads, seq, 1) for token, (kv_heads, 1, head_dim) for channel and
(kv_heads, seq, head_dim / group_size, 1) for group. Error bound per element:
``|x - x_hat| <= scale / 2`` plus the storage rounding of scale and zero point and the output
dtype's rounding (derived and tested in ``tests/test_uniform_codecs.py``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..errors import CodecError, WireError
from ..limits import MAX_HEAD_DIM
from .base import (LayerContext, LayerKV, Param, TensorCodec, check_layer, pack_sections,
                   require_finite, tensor_bytes, tensor_from, unpack_sections)
from .bitpack import pack, unpack
from .quant import SCALE_DTYPES, Quantized, dequantize, levels, quantize
from .registry import register

_SCALE_DTYPES = SCALE_DTYPES
GRANULARITIES = ("token", "channel", "group")


def quantize_per_token(x: torch.Tensor, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., head_dim] -> (int8 codes in -127..127, scales [..., 1] in scale_dtype)."""
    q = quantize(x, 8, dim=-1, symmetric=True, scale_dtype=scale_dtype)
    return _signed(q.codes), q.scale


def dequantize_per_token(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Signed int8 codes times a broadcastable scale, in ``dtype`` (any granularity's shapes broadcast)."""
    # a scale rounded up in storage can push 127 * scale past fp16's max: clamp, never emit inf
    limit = torch.finfo(dtype).max
    return (codes.float() * scale.float()).clamp_(-limit, limit).to(dtype)


def _signed(codes: torch.Tensor) -> torch.Tensor:
    """quant's symmetric 8-bit codes (0..254, offset 127) -> signed int8 -127..127 (uint8 wraps mod 256)."""
    return codes.sub(127).view(torch.int8)


def group_view(t: torch.Tensor, granularity: str, group_size: int) -> tuple[torch.Tensor, int]:
    """Reshape [heads, seq, head_dim] so each quantization group lies along one dim; return (view, dim)."""
    if granularity == "token":
        return t, -1
    if granularity == "channel":
        return t, 1
    h, s, d = t.shape
    return t.reshape(h, s, d // group_size, group_size), -1


def scale_shape(shape: tuple[int, int, int], granularity: str, group_size: int) -> tuple[int, ...]:
    h, s, d = shape
    if granularity == "token":
        return (h, s, 1)
    if granularity == "channel":
        return (h, 1, d)
    return (h, s, d // group_size, 1)


class UniformQuantCodec(TensorCodec):
    """Shared body of ``int8`` and ``int4``: quantize K and V with ``codecs/quant.py``, bit-pack codes."""

    bits: ClassVar[int]

    @classmethod
    def uniform_params(cls, group_size: int, symmetric: bool) -> dict[str, Param]:
        return {
            "scale_dtype": Param(str, "float16", "dtype of the stored scales (and zero points)",
                                 choices=tuple(SCALE_DTYPES)),
            "granularity": Param(str, "token", "what shares one scale: token (per head and token, over "
                                 "head_dim), channel (per head and channel, over the sequence) or group "
                                 "(group_size consecutive head_dim elements of one token)",
                                 choices=GRANULARITIES),
            "group_size": Param(int, group_size, "elements per group along head_dim (granularity=group "
                                "only; must divide head_dim)", minimum=1, maximum=MAX_HEAD_DIM),
            "symmetric": Param(bool, symmetric, "absmax scale around zero (True) or min-max scale plus a "
                               "zero point (False)"),
        }

    # ---- layout helpers -------------------------------------------------------------------------

    def _check_groups(self, head_dim: int, err: type[Exception]) -> None:
        g = self._params["group_size"]
        if self._params["granularity"] == "group" and head_dim % g:
            raise err(f"codec {self.name!r}: head_dim {head_dim} is not a multiple of group_size {g}; "
                      f"set group_size to a divisor of {head_dim} or use granularity='token'")

    def _codes_bytes(self, codes: torch.Tensor) -> bytes:
        if self.bits == 8:
            return tensor_bytes(_signed(codes) if self._params["symmetric"] else codes)
        return tensor_bytes(pack(codes, self.bits))

    def _codes_from(self, buf: memoryview, view_shape: tuple[int, ...]) -> torch.Tensor:
        n = 1
        for s in view_shape:
            n *= s
        if self.bits == 8:
            return tensor_from(buf, torch.int8 if self._params["symmetric"] else torch.uint8, view_shape)
        packed = tensor_from(buf, torch.uint8, (len(buf),))
        return unpack(packed, self.bits, n).reshape(view_shape)  # WireError unless exactly packed_size(n)

    # ---- encode / decode ------------------------------------------------------------------------

    def encode_layer(self, kv: LayerKV, ctx: LayerContext) -> bytes:
        check_layer(kv, ctx)
        self._check_groups(kv.k.shape[-1], CodecError)
        p = self._params
        sdt, sym = SCALE_DTYPES[p["scale_dtype"]], p["symmetric"]
        sections = []
        for t in (kv.k, kv.v):
            view, dim = group_view(t, p["granularity"], p["group_size"])
            try:
                q = quantize(view, self.bits, dim=dim, symmetric=sym, scale_dtype=sdt)
            except CodecError as exc:
                # Every element lies in exactly one group and NaN/Inf propagate through amax/amin, so
                # a NaN/Inf input always lands here: require_finite then raises the KVError. This
                # spares a full isfinite pass per tensor (it cost as much as the quantization).
                require_finite(kv, ctx, self.name)
                hint = "" if sym else " (or symmetric=True if the values span more than float32's range)"
                raise CodecError(f"codec {self.name!r}: {exc}{hint}") from exc
            sections += [self._codes_bytes(q.codes), tensor_bytes(q.scale)]
            if not sym:
                sections.append(tensor_bytes(q.zero))
        return pack_sections(sections)

    def decode_layer(self, payload: bytes, ctx: LayerContext) -> LayerKV:
        p = self._params
        sdt, sym = SCALE_DTYPES[p["scale_dtype"]], p["symmetric"]
        h, s, d = ctx.shape
        self._check_groups(d, WireError)
        per = 2 if sym else 3
        parts = unpack_sections(payload, 2 * per, self.name)
        sshape = scale_shape(ctx.shape, p["granularity"], p["group_size"])
        vshape = (h, s, d // p["group_size"], p["group_size"]) if p["granularity"] == "group" else (h, s, d)
        out = []
        for i in range(2):
            sec = parts[i * per:(i + 1) * per]
            codes = self._codes_from(sec[0], vshape)
            scale = tensor_from(sec[1], sdt, sshape)
            zero = tensor_from(sec[2], sdt, sshape) if not sym else None
            self._check_decoded(codes, scale, zero)
            if self.bits == 8 and sym:
                x = dequantize_per_token(codes, scale, ctx.dtype)
            else:
                x = dequantize(Quantized(codes, scale, zero), self.bits, ctx.dtype, symmetric=sym)
            out.append(x.reshape(h, s, d))
        return LayerKV(out[0], out[1])

    def _check_decoded(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None) -> None:
        """Refuse what no encoder emits (a garbled payload must not decode to NaN/Inf silently)."""
        # (a negative scale is legitimate: quant.py yields one when a near-constant group's minimum
        # rounds above its maximum in scale_dtype; its codes are then all 0 and decode to the zero point)
        if not torch.isfinite(scale).all():
            raise WireError(f"codec {self.name!r}: payload holds a non-finite scale")
        if zero is not None and not torch.isfinite(zero).all():
            raise WireError(f"codec {self.name!r}: payload holds a non-finite zero point")
        if self._params["symmetric"] and codes.numel():
            bad = int(codes.min()) == -128 if self.bits == 8 else int(codes.max()) > 2 * levels(self.bits, True)
            if bad:
                raise WireError(f"codec {self.name!r}: payload holds a symmetric code outside the balanced range")


@register
class Int8(UniformQuantCodec):
    name = "int8"
    bits = 8
    summary = "uniform int8 (per token by default; per channel / per group; symmetric or min-max)"
    PARAMS = UniformQuantCodec.uniform_params(group_size=64, symmetric=True)
    _LEGACY = ("scale_dtype",)  # the only parameter int8 had before granularity/group_size/symmetric

    @property
    def params(self) -> dict[str, Any]:
        """Canonical params, omitting the newer ones while they hold their defaults.

        A default int8 thus writes the same wire header (and payload) as before those params
        existed, and old headers (``{"scale_dtype": ...}`` only) build the same codec.
        """
        return {k: v for k, v in self._params.items()
                if k in self._LEGACY or v != self.PARAMS[k].default}


Int8PerToken = Int8  # the class's name before granularity/group_size/symmetric existed
