"""Uniform quantization primitives shared by the quantizing codecs.

A caller reshapes a tensor so that every quantization group lies along one dimension, then calls
:func:`quantize` with the reduction dimension. Codes are unsigned (``0 .. 2**bits - 1``) so they
bit-pack directly:

- asymmetric: ``scale = (max - min) / (2**bits - 1)``, ``zero = min``, ``code = round((x - zero) / scale)``;
- symmetric: ``scale = max|x| / (2**(bits-1) - 1)``, ``code = round(x / scale) + 2**(bits-1) - 1``
  (levels -(2^(b-1)-1)..+(2^(b-1)-1), so zero is exact and the range is balanced).

Scales and zero points are rounded to their storage dtype *before* codes are computed, so the
decoder sees exactly what the encoder used and the error bound ``|x - x_hat| <= scale / 2`` holds
(plus the output dtype's rounding). Constant groups get scale 0 and decode exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import CodecError

SCALE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class Quantized:
    codes: torch.Tensor  # uint8, same shape as the input
    scale: torch.Tensor  # storage dtype, input shape with the reduced dim kept as 1
    zero: torch.Tensor | None  # asymmetric only


def levels(bits: int, symmetric: bool) -> int:
    return 2 ** (bits - 1) - 1 if symmetric else 2**bits - 1


def quantize(x: torch.Tensor, bits: int, *, dim: int = -1, symmetric: bool = False,
             scale_dtype: torch.dtype = torch.float16, refuse_underflow: bool = True) -> Quantized:
    """``refuse_underflow``: refuse a tensor whose scales mostly underflow (``_check_no_underflow``);
    off for tensors whose tiny groups are meant to vanish (the factors of negligible singular values)."""
    if not 2 <= bits <= 8:
        raise CodecError(f"uniform quantization supports 2..8 bits, not {bits}")
    xf = x.float()
    if symmetric:
        qmax = levels(bits, True)
        exact = xf.abs().amax(dim=dim, keepdim=True) / qmax
        scale = exact.to(scale_dtype)
        _check_finite(scale, scale_dtype)
        if refuse_underflow:
            _check_no_underflow(exact, scale, scale_dtype)
        s = scale.float()
        inv = torch.where(s > 0, 1.0 / s, torch.zeros_like(s))
        codes = torch.round(xf * inv).clamp_(-qmax, qmax).add_(qmax)
        return Quantized(codes.to(torch.uint8), scale, None)
    qmax = levels(bits, False)
    # + 0.0 turns a -0.0 zero point into +0.0: -0.0 and +0.0 tie in a min, and which one a min
    # returns is the implementation's choice; this way every implementation writes the same bytes
    lo = xf.amin(dim=dim, keepdim=True).to(scale_dtype) + 0.0
    hi = xf.amax(dim=dim, keepdim=True)
    _check_finite(lo, scale_dtype)
    exact = (hi - lo.float()) / qmax
    scale = exact.to(scale_dtype) + 0.0  # -0.0 likewise (a constant row of -0.0)
    _check_finite(scale, scale_dtype)
    if refuse_underflow:
        _check_no_underflow(exact, scale, scale_dtype)
    s = scale.float()
    inv = torch.where(s > 0, 1.0 / s, torch.zeros_like(s))
    codes = torch.round((xf - lo.float()) * inv).clamp_(0, qmax)
    return Quantized(codes.to(torch.uint8), scale, lo)


def dequantize(q: Quantized, bits: int, dtype: torch.dtype, *, symmetric: bool = False) -> torch.Tensor:
    codes = q.codes.float()
    if symmetric:
        out = (codes - levels(bits, True)) * q.scale.float()
    else:
        out = codes * q.scale.float() + q.zero.float()
    limit = torch.finfo(dtype).max  # a scale rounded up in storage must never produce inf
    return out.clamp_(-limit, limit).to(dtype)


def _check_finite(t: torch.Tensor, dtype: torch.dtype) -> None:
    if not torch.isfinite(t).all():
        raise CodecError(f"a quantization scale or zero point overflows {dtype}; use scale_dtype=float32")


def _check_no_underflow(exact: torch.Tensor, stored: torch.Tensor, dtype: torch.dtype) -> None:
    """A cache whose values mostly lie below what the scale dtype can scale would decode to constants
    (values near 1e-6 through float16 scales: 98 % became 0): refuse it, as an overflow is. A few tiny
    groups among normal ones (a near-zero row) only lose values smaller than the cache's quantization
    error elsewhere, so they are encoded as before: the test is on the share of groups."""
    spread = exact > 0
    lost = spread & (stored == 0)
    if bool(lost.any()) and int(lost.sum()) * 2 > int(spread.sum()):
        raise CodecError(f"a quantization scale underflows {dtype} in {int(lost.sum())} of {int(spread.sum())} "
                         f"groups (the values are smaller than it can scale); use scale_dtype=float32")
