"""int4: uniform 4-bit round-to-nearest quantization of K and V, codes bit-packed two per byte.

Same scheme and parameters as ``int8`` (see ``codecs/int8.py``): standard uniform affine
quantization (Jacob et al., CVPR 2018, arXiv 1712.05877) through ``codecs/quant.py``, with one
scale (and, asymmetric, one zero point) per ``granularity`` unit -- ``token`` (per head and token,
over head_dim; the default), ``channel`` (per head and channel over the sequence, the choice KIVI --
Liu et al., ICML 2024, arXiv 2402.02750 -- motivates for keys, whose outliers sit in a few channels)
or ``group`` (``group_size`` consecutive head_dim elements of one token; default 32, which must
divide head_dim).

Defaults: asymmetric min-max (at 4 bits the zero point buys a whole level over the balanced
symmetric range -7..7), ``granularity=token`` so every head_dim works (stories260K's head_dim is 8);
at head_dim 64 a token group equals FlexGen-style groups of 64. ``granularity=group`` with
``group_size=32`` halves the error on wide heads at the cost of one more fp16 scale + zero per 32
elements (1 extra bit per element instead of 0.5 at head_dim 64).

Faithful: round-to-nearest, min-max / absmax ranges, fp16 scales and zero points by default.
Differs: one granularity for both K and V (KIVI's per-channel keys / per-token values split, its
fp16 residual window and its grouping along the sequence are the ``kivi`` codecs' job); scales and
zeros are rounded to ``scale_dtype`` before codes are computed, so the decoder uses exactly what the
encoder did.

Wire layout: as int8, but codes are unsigned 0..15 (symmetric: value + 7, 0..14) packed by
``bitpack.pack(codes, 4)`` -- two per byte, ``ceil(numel / 8) * 4`` bytes per tensor. Error bound per
element: ``|x - x_hat| <= scale / 2`` plus scale/zero storage rounding and output rounding.
"""

from __future__ import annotations

from .int8 import UniformQuantCodec
from .registry import register


@register
class Int4(UniformQuantCodec):
    name = "int4"
    bits = 4
    summary = "uniform int4 packed 2/byte (per token by default; per channel / per group; min-max or symmetric)"
    PARAMS = UniformQuantCodec.uniform_params(group_size=32, symmetric=False)
