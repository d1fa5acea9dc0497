"""svd_runtime, svd_runtime_int4: per-head truncated SVD of the cached K and V, computed at runtime.

Context: Palu (C.-C. Chang et al.: "Palu: Compressing KV-Cache with Low-Rank Projection",
arXiv 2407.21118, 2024) exploits the low rank of the KV cache by factorizing the key/value
*projection weights* offline (W ~ A B), caching the low-rank latent ``x A`` and reconstructing with
``B`` on the fly. That needs the model's weights and changes the attention kernel, which a wire codec
cannot do. These codecs therefore do NOT implement Palu: they take the low-rank idea to the cache
itself and compute, for each layer and each KV head separately, the truncated SVD of the
[seq, head_dim] matrix at encode time (one batched ``torch.linalg.svd`` over heads, float32).

Stored per tensor (K, V), per head h, with r = min(rank, seq, head_dim):

- ``scale`` float32 [h, 2]: the head's absmax m (the SVD runs on X / m, so fp32 never overflows)
  and the largest singular value s1 of X / m;
- ``A = U_r S_r / s1`` [h, seq, r] and ``B = V_r^T`` [h, r, head_dim]: the singular values are folded
  into the left factor ("U*S") and normalised by s1 so every entry of A and B lies in [-1, 1]; this
  keeps fp16 factors finite for any fp16/bf16/fp32 input and the int4 scales well inside fp16.

Decode: X_hat = (A @ B) * s1 * m, clamped to the output dtype's finite range.

``svd_runtime`` stores A and B in ``factor_dtype`` (float16 by default). ``svd_runtime_int4`` stores
the same factors as 4-bit symmetric codes (``quant.quantize``, levels -7..7) in per-row groups of
``group_size``: the rows of B (one per singular vector, along head_dim) and the rows of A^T (one per
singular vector, along tokens -- grouping along a singular vector keeps each group's scale matched
to its own singular value), codes packed 2 per byte (``bitpack``), scales in ``scale_dtype``.

Error (Eckart-Young): with exact factors, ||X - X_hat||_F = sqrt(sum_{i>r} sigma_i^2), the smallest
possible for rank r. Factor rounding adds at most ||dA||_F s1 m + sigma_1 ||dB||_F (+ the product
term) by the triangle inequality, since ||M B||_F <= ||M||_F ||B||_2 and ||B||_2 = 1. rank >=
min(seq, head_dim) is clamped to min(seq, head_dim): the factors are then exact (up to their
storage rounding), but fp16 factors of a 16-bit cache are larger than the raw tensor whenever
r >= seq*dim/(seq+dim) -- low rank only pays when r is well below that.

Shared with Palu: the low-rank view of K/V (a rank-r latent per head, the granularity of Palu's
per-head variant, M-LRD). Differs: the decomposition is of the cache at runtime, not of the
weights offline (no calibration, no fused reconstruction kernel, no Walsh-Hadamard transform before
quantization), the SVD is recomputed for every layer and request (slow on CPU), and keys are
factorized after RoPE (Palu caches the pre-RoPE latent and applies RoPE at reconstruction).
"""

from __future__ import annotations

import math

import torch

from ..errors import CodecError, WireError
from . import bitpack, quant
from ..limits import MAX_GROUP, MAX_HEAD_DIM
from .base import (LayerContext, LayerKV, Param, TensorCodec, check_layer, pack_sections,
                   require_finite, tensor_bytes, tensor_from, unpack_sections)
from .registry import register

_FACTOR_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_INT4 = 4


def effective_rank(rank: int, seq: int, dim: int) -> int:
    return max(1, min(rank, seq, dim))


def factorize(x: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [h, s, d] -> (scale fp32 [h, 2], A [h, s, r] fp32 in [-1, 1], B [h, r, d] fp32): x ~ (A @ B) * s1 * m."""
    xf = x.float()
    m = xf.abs().amax(dim=(1, 2))
    m = torch.where(m > 0, m, torch.ones_like(m))
    try:
        u, s, vh = torch.linalg.svd(xf / m[:, None, None], full_matrices=False)  # batched over heads
    except torch.linalg.LinAlgError as exc:  # LAPACK's gesdd did not converge (rare, finite input)
        raise CodecError(f"svd_runtime: the SVD of a [{x.shape[1]}, {x.shape[2]}] head did not converge ({exc})") from exc
    r = effective_rank(rank, x.shape[1], x.shape[2])
    s1 = s[:, 0]
    s1 = torch.where(s1 > 0, s1, torch.ones_like(s1))
    a = u[:, :, :r] * (s[:, None, :r] / s1[:, None, None])
    b = vh[:, :r, :]
    return torch.stack((m, s1), dim=1), _dense(a.clamp_(-1.0, 1.0)), _dense(b.clamp(-1.0, 1.0))


def _dense(t: torch.Tensor) -> torch.Tensor:
    """Row-major strides. LAPACK returns column-major factors; a [.., .., 1] slice of one counts as
    contiguous yet keeps a non-unit last stride, which ``tensor_bytes`` cannot view as bytes."""
    return t.new_empty(t.shape).copy_(t)


def reconstruct(scale: torch.Tensor, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype,
                codec: str) -> torch.Tensor:
    x = torch.bmm(a.float(), b.float())
    x = x * scale[:, 1, None, None] * scale[:, 0, None, None]  # ~ x / m first: no intermediate overflow
    if not torch.isfinite(x).all():
        raise WireError(f"codec {codec!r}: payload decodes to NaN/Inf (corrupted factors or scales)")
    limit = torch.finfo(dtype).max
    return x.clamp_(-limit, limit).to(dtype)


def _scale_from(buf, h: int, codec: str) -> torch.Tensor:
    scale = tensor_from(buf, torch.float32, (h, 2))
    if not torch.isfinite(scale).all() or (scale <= 0).any():
        raise WireError(f"codec {codec!r}: corrupted per-head scales")
    return scale


@register
class SvdRuntime(TensorCodec):
    name = "svd_runtime"
    summary = "per-head truncated SVD of K and V at runtime (U*S and V^T factors, fp16); not Palu"
    PARAMS = {
        "rank": Param(int, 16, "kept singular values per head (clamped to min(seq, head_dim))", minimum=1,
                      maximum=MAX_HEAD_DIM),
        "factor_dtype": Param(str, "float16", "dtype of the stored factors", choices=tuple(_FACTOR_DTYPES)),
    }

    def encode_layer(self, kv: LayerKV, ctx: LayerContext) -> bytes:
        check_layer(kv, ctx)
        require_finite(kv, ctx, self.name)
        fdt = _FACTOR_DTYPES[self.params["factor_dtype"]]
        sections = []
        for t in (kv.k, kv.v):
            scale, a, b = factorize(t, self.params["rank"])
            sections += [tensor_bytes(scale), tensor_bytes(a.to(fdt)), tensor_bytes(b.to(fdt))]
        return pack_sections(sections)

    def decode_layer(self, payload: bytes, ctx: LayerContext) -> LayerKV:
        fdt = _FACTOR_DTYPES[self.params["factor_dtype"]]
        h, s, d = ctx.shape
        r = effective_rank(self.params["rank"], s, d)
        secs = unpack_sections(payload, 6, self.name)
        out = []
        for scale, a, b in (secs[:3], secs[3:]):
            out.append(reconstruct(_scale_from(scale, h, self.name), tensor_from(a, fdt, (h, s, r)),
                                   tensor_from(b, fdt, (h, r, d)), ctx.dtype, self.name))
        return LayerKV(*out)


def quantize_rows(rows: torch.Tensor, group: int, sdt: torch.dtype) -> list[bytes]:
    """rows [h, r, n] -> [packed int4 codes of the first n per row, scales [h, r, n_groups, 1]]."""
    h, r, n = rows.shape
    n_groups = math.ceil(n / group)
    padded = torch.nn.functional.pad(rows, (0, n_groups * group - n)).view(h, r, n_groups, group)
    # the factors of negligible singular values are tiny by construction: their groups may vanish
    q = quant.quantize(padded, _INT4, dim=-1, symmetric=True, scale_dtype=sdt, refuse_underflow=False)
    codes = q.codes.view(h, r, n_groups * group)[:, :, :n]
    return [tensor_bytes(bitpack.pack(codes, _INT4)), tensor_bytes(q.scale)]


def dequantize_rows(packed, scales, shape: tuple[int, int, int], group: int, sdt: torch.dtype) -> torch.Tensor:
    h, r, n = shape
    n_groups = math.ceil(n / group)
    codes = bitpack.unpack(tensor_from(packed, torch.uint8, (len(packed),)), _INT4, h * r * n).view(h, r, n)
    if int(codes.max()) > 2 * quant.levels(_INT4, True):
        raise WireError("svd_runtime_int4: code out of range (corrupted payload)")
    codes = torch.nn.functional.pad(codes, (0, n_groups * group - n), value=quant.levels(_INT4, True))
    q = quant.Quantized(codes.view(h, r, n_groups, group), tensor_from(scales, sdt, (h, r, n_groups, 1)), None)
    return quant.dequantize(q, _INT4, torch.float32, symmetric=True).view(h, r, n_groups * group)[:, :, :n]


@register
class SvdRuntimeInt4(TensorCodec):
    name = "svd_runtime_int4"
    summary = "per-head truncated SVD of K and V at runtime, factors as int4 in per-row groups; not Palu"
    PARAMS = {
        "rank": Param(int, 16, "kept singular values per head (clamped to min(seq, head_dim))", minimum=1,
                      maximum=MAX_HEAD_DIM),
        "group_size": Param(int, 64, "factor entries per int4 scale, along each factor row", minimum=1,
                            maximum=MAX_GROUP),
        "scale_dtype": Param(str, "float16", "dtype of the stored int4 scales", choices=tuple(quant.SCALE_DTYPES)),
    }

    def encode_layer(self, kv: LayerKV, ctx: LayerContext) -> bytes:
        check_layer(kv, ctx)
        require_finite(kv, ctx, self.name)
        group = self.params["group_size"]
        sdt = quant.SCALE_DTYPES[self.params["scale_dtype"]]
        sections = []
        for t in (kv.k, kv.v):
            scale, a, b = factorize(t, self.params["rank"])
            sections += [tensor_bytes(scale), *quantize_rows(a.transpose(1, 2), group, sdt),
                         *quantize_rows(b, group, sdt)]
        return pack_sections(sections)

    def decode_layer(self, payload: bytes, ctx: LayerContext) -> LayerKV:
        group = self.params["group_size"]
        sdt = quant.SCALE_DTYPES[self.params["scale_dtype"]]
        h, s, d = ctx.shape
        r = effective_rank(self.params["rank"], s, d)
        secs = unpack_sections(payload, 10, self.name)
        out = []
        for scale, a_codes, a_scales, b_codes, b_scales in (secs[:5], secs[5:]):
            a = dequantize_rows(a_codes, a_scales, (h, r, s), group, sdt).transpose(1, 2)
            b = dequantize_rows(b_codes, b_scales, (h, r, d), group, sdt)
            out.append(reconstruct(_scale_from(scale, h, self.name), a, b, ctx.dtype, self.name))
        return LayerKV(*out)
