"""kivi2 / kivi4: KIVI's asymmetric 2- and 4-bit KV quantization with a full-precision residual.

Follows Liu, Yuan, Jin, Zhong, Xu, Braverman, Chen, Hu: "KIVI: A Tuning-Free Asymmetric 2bit
Quantization for KV Cache", ICML 2024, arXiv:2402.02750, and its released code (github.com/jy-yuan/KIVI:
``models/llama_kivi.py``, ``quant/new_pack.py``).

What follows KIVI's code:

- keys are quantized PER CHANNEL: the quantized key prefix is cut into groups of ``group_size`` (G)
  consecutive tokens and every (head, channel) of every group gets its own asymmetric min/max
  scale and zero point (``scale = (max - min) / (2**bits - 1)``, ``zero = min``; codes
  ``round(clamp((x - min) / scale, 0, 2**bits - 1))``);
- values are quantized PER TOKEN, asymmetric, in groups of ``value_group_size`` consecutive channels
  along head_dim: one scale and zero point per (head, token, channel group). KIVI's code uses its one
  ``group_size`` for both (``triton_quantize_and_pack_along_last_dim(values, group_size, bits)``), so
  the default is 32 for both, as in the paper's experiments and the code's ``example.py`` (the
  argument default of its evaluation scripts, ``utils/process_args.py``, is 128);
- the ``residual`` (R) most recent tokens stay in the cache's own dtype, bit-exact; R = 128 as in
  the paper's experiments and the scripts' ``buffer_length`` default (``example.py`` uses 32);
- scales and zero points are stored in float16 (``scale_dtype``; KIVI keeps ``scale`` and ``mn`` in
  the cache's fp16), codes are bit-packed (4 per byte at 2 bits, 2 per byte at 4 bits; KIVI packs
  them into int32 words, which changes the byte order only).

Value groups when ``value_group_size`` does not divide head_dim: KIVI's code asserts that it does.
Here the group is the LARGEST DIVISOR of head_dim not above ``value_group_size`` (``value_group``),
so every group has the same size and none is larger than asked: head_dim 64, 96, 128 and 256 give
32; head_dim 8 (stories260K) gives 8, the whole vector; head_dim 80 gives 20. ``value_group_size=0``
is the previous default, one scale over the whole head_dim per token (registered in
``config/all-codecs.yaml`` as ``kivi4_tokenwise`` / ``kivi2_tokenwise``); it is not KIVI's.

Which tokens are quantized (``S`` = sequence length):

- keys: the first ``n_k = floor(max(S - R, 0) / G) * G`` tokens are quantized; the remaining
  ``S - n_k`` tokens (the R most recent plus the ``(S - R) mod G`` tokens of the incomplete group
  just before them, so between R and R + G - 1 tokens) stay in full precision. This is KIVI's
  "the residual holds the tokens that do not fill a group" rule applied to a one-shot prefill;
- values: the first ``n_v = max(S - R, 0)`` tokens are quantized (per-token quantization needs no
  token groups); the R most recent stay in full precision.
  If ``S <= R`` nothing is quantized and the layer crosses the wire uncompressed.

What differs from KIVI's code: kvwire compresses a finished prefill cache once, so there is no
streaming residual that fills and flushes during decoding. KIVI's prefill keeps ``S mod R`` key
tokens (0..R-1) and exactly R value tokens in full precision and quantizes keys in multiples of R;
we keep the R most recent tokens for both and quantize keys in multiples of G, as the paper
describes. KIVI computes min, max and scale in fp16; we compute them in float32 and round the
stored scale and zero point to float16 (decode reads the same rounded values the encoder used).
One ``bits`` for keys and values (KIVI's code has ``k_bits`` and ``v_bits``). The error bound of
every quantized element is half a step, ``scale / 2``, plus the float16 rounding of the stored
scale/zero point (see ``codecs/quant``).

Payload: 8 length-prefixed sections, in this order: key codes (packed), key scales
[H, n_k/G, 1, D], key zero points (same), key residual [H, S-n_k, D] in the cache dtype; value
codes (packed), value scales [H, n_v, D/VG, 1] (VG = ``value_group(D, value_group_size)``), value
zero points (same), value residual [H, S-n_v, D]. Section sizes follow from the layer shape and
params; decode checks them.
"""

from __future__ import annotations

import torch

from ..errors import CodecError, WireError
from . import bitpack
from ..limits import MAX_GROUP, MAX_HEAD_DIM, MAX_TOKENS
from .base import (LayerContext, LayerKV, Param, TensorCodec, check_layer, pack_sections,
                   require_finite, tensor_bytes, tensor_from, unpack_sections)
from .quant import SCALE_DTYPES, Quantized, dequantize, quantize
from .registry import register


def split_points(seq: int, group_size: int, residual: int) -> tuple[int, int]:
    """(n_k, n_v): how many leading tokens of keys / values are quantized."""
    n_v = max(seq - residual, 0)
    return (n_v // group_size) * group_size, n_v


def value_group(head_dim: int, value_group_size: int) -> int:
    """Channels per value group: the largest divisor of ``head_dim`` not above ``value_group_size``
    (0: the whole head_dim). 32 -> 32 for head_dim 64/96/128/256, 8 for head_dim 8, 20 for 80."""
    if value_group_size <= 0 or value_group_size >= head_dim:
        return head_dim
    return next(g for g in range(value_group_size, 0, -1) if head_dim % g == 0)


class _Kivi(TensorCodec):
    bits: int = 2
    PARAMS = {
        "group_size": Param(int, 32, "tokens per key quantization group (per-channel scales within each group)",
                            minimum=1, maximum=MAX_GROUP),
        "residual": Param(int, 128, "most recent tokens kept in full precision (keys and values)", minimum=0,
                          maximum=MAX_TOKENS),
        "value_group_size": Param(int, 32, "channels per value quantization group along head_dim (KIVI's code: 32); "
                                  "the largest divisor of head_dim not above it when it does not divide; "
                                  "0 = whole head_dim (one scale per token)", minimum=0,
                                  maximum=MAX_HEAD_DIM),
        "scale_dtype": Param(str, "float16", "dtype of the stored scales and zero points",
                             choices=tuple(SCALE_DTYPES)),
    }

    def _value_group(self, head_dim: int) -> int:
        return value_group(head_dim, self.params["value_group_size"])

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
    summary = "KIVI 2-bit: keys per-channel in token groups, values per-token in channel groups, fp residual window"


@register
class Kivi4(_Kivi):
    name = "kivi4"
    bits = 4
    summary = "KIVI 4-bit: keys per-channel in token groups, values per-token in channel groups, fp residual window"
