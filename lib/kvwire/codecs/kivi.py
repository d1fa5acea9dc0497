"""kivi2 / kivi4: KIVI's asymmetric 2- and 4-bit KV quantization with a full-precision residual.

Follows Liu, Yuan, Jin, Zhong, Xu, Braverman, Chen, Hu: "KIVI: A Tuning-Free Asymmetric 2bit
Quantization for KV Cache", ICML 2024, arXiv:2402.02750.

What is faithful:

- keys are quantized PER CHANNEL: the quantized key prefix is cut into groups of ``group_size`` (G)
  consecutive tokens and every (head, channel) of every group gets its own asymmetric min/max
  scale and zero point (``scale = (max - min) / (2**bits - 1)``, ``zero = min``);
- values are quantized PER TOKEN, asymmetric, in groups of ``value_group_size`` channels along
  head_dim (0, the default, means the whole head_dim vector: one scale per token and head);
- the ``residual`` (R) most recent tokens stay in the cache's own dtype, bit-exact;
- scales and zero points are stored in float16 (``scale_dtype``), codes are bit-packed
  (4 per byte at 2 bits, 2 per byte at 4 bits). Defaults G=32, R=128 are the paper's settings.

Which tokens are quantized (``S`` = sequence length):

- keys: the first ``n_k = floor(max(S - R, 0) / G) * G`` tokens are quantized; the remaining
  ``S - n_k`` tokens (the R most recent plus the ``(S - R) mod G`` tokens of the incomplete group
  just before them, so between R and R + G - 1 tokens) stay in full precision. This is KIVI's
  "the residual holds the tokens that do not fill a group" rule applied to a one-shot prefill;
- values: the first ``n_v = max(S - R, 0)`` tokens are quantized (per-token quantization needs no
  token groups); the R most recent stay in full precision.
  If ``S <= R`` nothing is quantized and the layer crosses the wire uncompressed.

What differs: kvwire compresses a finished prefill cache once, so there is no streaming
residual that fills and flushes during decoding. KIVI's released code, at prefill, keeps
``S mod R`` key tokens (0..R-1) and exactly R value tokens in full precision and quantizes keys
in multiples of R; we keep the R most recent tokens for both and quantize keys in multiples of
G, as the paper describes. Zero points are stored as the group minimum in float16 (KIVI keeps
``mn`` in fp16 too). The error bound of every quantized element is half a step,
``scale / 2``, plus the float16 rounding of the stored scale/zero point (see ``codecs/quant``).

Payload: 8 length-prefixed sections, in this order: key codes (packed), key scales
[H, n_k/G, 1, D], key zero points (same), key residual [H, S-n_k, D] in the cache dtype; value
codes (packed), value scales [H, n_v, D/value_group_size, 1], value zero points (same), value
residual [H, S-n_v, D]. Section sizes follow from the layer shape and params; decode checks them.
"""

from __future__ import annotations

import torch

from ..errors import CodecError, WireError
from . import bitpack
from .base import (LayerContext, LayerKV, Param, TensorCodec, check_layer, pack_sections,
                   require_finite, tensor_bytes, tensor_from, unpack_sections)
from .quant import SCALE_DTYPES, Quantized, dequantize, quantize
from .registry import register


def split_points(seq: int, group_size: int, residual: int) -> tuple[int, int]:
    """(n_k, n_v): how many leading tokens of keys / values are quantized."""
    n_v = max(seq - residual, 0)
    return (n_v // group_size) * group_size, n_v


class _Kivi(TensorCodec):
    bits: int = 2
    PARAMS = {
        "group_size": Param(int, 32, "tokens per key quantization group (per-channel scales within each group)",
                            minimum=1),
        "residual": Param(int, 128, "most recent tokens kept in full precision (keys and values)", minimum=0),
        "value_group_size": Param(int, 0, "channels per value quantization group along head_dim; "
                                  "0 = whole head_dim (one scale per token)", minimum=0),
        "scale_dtype": Param(str, "float16", "dtype of the stored scales and zero points",
                             choices=tuple(SCALE_DTYPES)),
    }

    def _value_group(self, head_dim: int) -> int:
        vg = self.params["value_group_size"] or head_dim
        if head_dim % vg:
            raise CodecError(
                f"codec {self.name!r}: value_group_size={vg} does not divide head_dim={head_dim}; "
                f"use a divisor of {head_dim} or 0 (whole head_dim)"
            )
        return vg

    def encode_layer(self, kv: LayerKV, ctx: LayerContext) -> bytes:
        check_layer(kv, ctx)
        require_finite(kv, ctx, self.name)
        h, s, d = kv.k.shape
        g, bits = self.params["group_size"], self.bits
        sdt = SCALE_DTYPES[self.params["scale_dtype"]]
        vg = self._value_group(d)
        n_k, n_v = split_points(s, g, self.params["residual"])
        try:
            qk = quantize(kv.k[:, :n_k].reshape(h, n_k // g, g, d), bits, dim=2, scale_dtype=sdt)
            qv = quantize(kv.v[:, :n_v].reshape(h, n_v, d // vg, vg), bits, dim=3, scale_dtype=sdt)
        except CodecError as exc:
            raise CodecError(f"codec {self.name!r}, layer {ctx.layer}: {exc}") from exc
        sections = []
        for q, rest in ((qk, kv.k[:, n_k:]), (qv, kv.v[:, n_v:])):
            sections += [tensor_bytes(bitpack.pack(q.codes, bits)), tensor_bytes(q.scale),
                         tensor_bytes(q.zero), tensor_bytes(rest)]
        return pack_sections(sections)

    def decode_layer(self, payload: bytes, ctx: LayerContext) -> LayerKV:
        h, s, d = ctx.shape
        g, bits = self.params["group_size"], self.bits
        sdt = SCALE_DTYPES[self.params["scale_dtype"]]
        vg = self._value_group(d)
        n_k, n_v = split_points(s, g, self.params["residual"])
        kc, ks, kz, kr, vc, vs, vz, vr = unpack_sections(payload, 8, self.name)
        k_shape, k_sshape = (h, n_k // g, g, d), (h, n_k // g, 1, d)
        v_shape, v_sshape = (h, n_v, d // vg, vg), (h, n_v, d // vg, 1)
        out = []
        for codes, scale, zero, rest, shape, sshape, n_q in ((kc, ks, kz, kr, k_shape, k_sshape, n_k),
                                                             (vc, vs, vz, vr, v_shape, v_sshape, n_v)):
            n_codes = h * n_q * d
            packed = tensor_from(codes, torch.uint8, (bitpack.packed_size(n_codes, bits),))
            q = Quantized(bitpack.unpack(packed, bits, n_codes).reshape(shape),
                          tensor_from(scale, sdt, sshape), tensor_from(zero, sdt, sshape))
            if not (torch.isfinite(q.scale).all() and torch.isfinite(q.zero).all()):
                raise WireError(f"codec {self.name!r}: non-finite scale or zero point in the payload")
            head = dequantize(q, bits, ctx.dtype).reshape(h, n_q, d)
            tail = tensor_from(rest, ctx.dtype, (h, s - n_q, d))
            out.append(torch.cat([head, tail], dim=1))
        return LayerKV(out[0], out[1])


@register
class Kivi2(_Kivi):
    name = "kivi2"
    bits = 2
    summary = "KIVI 2-bit: keys per-channel in token groups, values per-token, fp residual window"


@register
class Kivi4(_Kivi):
    name = "kivi4"
    bits = 4
    summary = "KIVI 4-bit: keys per-channel in token groups, values per-token, fp residual window"
