"""Low rank on the GPU: ``svd_runtime`` and ``svd_runtime_int4`` (``codecs/svd.py``), every parameter.

Encode (glue, not a kernel): the top-r singular pairs of every (layer, K/V, head) matrix of the cache at
once -- on a GPU by subspace iteration on each matrix's small Gram matrix (``_factorize_subspace``:
batched matmuls, Cholesky QR and one batched eigendecomposition of 32 x 32 matrices, 35-70x cuSOLVER's
batched SVD on an H100), elsewhere by the CPU codec's own ``factorize`` (``torch.linalg.svd``); the
U*S / V^T factors normalised by s1, cast (or int4-quantized, ``quant.quantize``'s ops) and copied into
the payload sections with torch ops (``FACTORIZE`` picks the method). On a GPU the factors are NOT the
CPU's bit for bit (another algorithm; float reductions differ; singular vectors of close singular values
rotate; signs are arbitrary): ``exact = False``. ``compare`` therefore checks
what a payload is for -- its reconstruction:
- given the layer's input (``kv``), the GPU payload's reconstruction error ||X - X_hat||_F of each
  (tensor, head) may exceed the CPU payload's by at most ``ERROR_TOL`` (1 %) of it, or
  ``ERROR_FLOOR`` (2^-12) of ||X||_F for near-exact reconstructions (full rank);
- without it (``reference.conformance`` passes payloads only), the two reconstructions of each
  (tensor, head) must agree to ``DECODE_TOL`` (1 %) relative Frobenius distance. Legitimate SVD
  differences move a rank-16 reconstruction by ~1e-4..1e-3 (fp16 factor rounding is ~5e-4); a
  layout, scale or sign bug moves it by O(1).
A head's "steps" are its distance in units of the tolerance (<= 1 passes), its elements count as
differing when it fails.

Decode (Triton, one launch per cache): program = (row block of a head's [seq, head_dim] output,
(layer * 2 + K/V) * heads + head); it loads a [BLOCK_S, r] tile of A and the head's [r, head_dim] B,
``tl.dot``, then ``X_hat = (acc * s1) * m`` clamped to the output dtype's finite range and rounded
to nearest even (bf16 on the bit pattern, as ``token/jit.py``), written into one dense
``[layers, 2, heads, seq, head_dim]`` tensor. fp16 factors go through the tensor cores (products of
fp16 are exact in the float32 accumulator); bf16 and fp32 factors and int4 factors (dequantized in
the kernel: ``(code - 7) * scale``, exact in float32, as ``quant.dequantize``) through an IEEE
float32 dot. Check mode refuses (``WireError``) what the CPU decoder refuses: a bad section table,
non-finite or non-positive scales, int4 code 15, a reconstruction that is NaN/Inf -- flagged by the
kernel in one int32 read back once.

Decode vs the CPU's ``torch.bmm``: same products, another summation order, so a result can differ
in its last float32 bits and round to the neighbouring fp16/bf16 value. ``same_decode`` accepts
every element within 1 ulp of the output dtype, or -- near zero, where cancellation in the r-term
dot makes ulps meaningless -- within ``2^-12`` of the (tensor, head)'s largest |value|, and, for
16-bit outputs, fewer than ``MAX_DIFFERING`` (1 %) of the elements differing at all (a rounding
or scaling bug changes most of them). Why these bounds: each side's float32 dot has an absolute
error below ~r * 2^-24 * sum_k |A_ik B_kj| * s1 * m <= r * 2^-24 * ||X_i||_2, i.e. ~2^-15 of the head's
magnitude for r = 16 and head_dim 128 -- well inside 2^-12 -- and far below one 16-bit ulp except
near zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import triton

from ...codecs import LayerKV
from ...codecs.base import LayerContext
from ...codecs.svd import effective_rank, factorize
from ...errors import KVError, WireError
from ..base import (
    Decoded,
    GpuPayloads,
    KernelCodec,
    Stats,
    as_layers,
    check_cache,
    register_kernel,
)
from ..launch import interpreted
from . import eager
from .jit import _lowrank_decode_kernel
from .layout import LowRankLayout, _quantize_rows, _require_finite

ERROR_TOL = 1e-2
ERROR_FLOOR = 2.0 ** -12
DECODE_TOL = 1e-2
ABS_SLACK = 2.0 ** -12
MAX_DIFFERING = 1e-2
BLOCK_S = 64  # output rows per decode program (sweepable, with DECODE_WARPS)
DECODE_WARPS = 4
INTERPRETED_BLOCK_S = 256
SVD_DRIVER: str | None = None  # cuSOLVER driver for torch.linalg.svd on CUDA (None: torch's choice; "gesvda":
#                                batched tall-skinny, approximate small singular values) -- a knob to time
# how the device encode finds the factors: "svd" (torch.linalg.svd, the CPU codec's own ops), "gram"
# (eigendecomposition of each head's small Gram matrix, ``_factorize_gram``: matmuls and one batched eigh)
# or "subspace" (subspace iteration on the Gram matrix, ``_factorize_subspace``: matmuls, batched Cholesky
# and one batched eigh of (rank + OVERSAMPLE)-square matrices, which cuSOLVER solves in one batched call)
# "auto": subspace on a GPU (H100, bench/NOTES.md issue 30: 35-70x the SVD's speed, 60-240x the CPU codec's,
# reconstruction error within 0.1 % of the SVD's), the SVD elsewhere (the CPU codec's own bytes)
FACTORIZE = "auto"
OVERSAMPLE, SUBSPACE_ITERS = 16, 8  # worst case on random (flat-spectrum) caches: +0.13 % error vs the SVD
#                                   (8, 4: +1.0 %, at the tolerance); rank 16 + 16 = 32: cuSOLVER's batched syevj
BAD_CODE, BAD_VALUE, BAD_SCALE = 1, 2, 4  # decode flags


# ---- the kernel codec ---------------------------------------------------------------------------

@register_kernel
class LowRankKernel(KernelCodec):
    """``svd_runtime`` / ``svd_runtime_int4``: device SVD (glue) + a Triton ``tl.dot`` decode."""

    names = ("svd_runtime", "svd_runtime_int4")
    exact = False

    @classmethod
    def supports(cls, name: str, params: Mapping[str, Any]) -> bool:
        return name in cls.names

    @classmethod
    def limits(cls) -> str:
        return "it implements every parameter"

    def layout(self, shape: Sequence[int]) -> LowRankLayout:
        _, _, h, s, d = shape
        return LowRankLayout(self.name, self.params, h, s, d)

    # -- encode (glue) --

    def encode(self, kv: torch.Tensor, stats: Stats = None, *, check: bool = True) -> GpuPayloads:
        n_layers, h, s, d = check_cache(kv, f"GPU {self.name} codec")
        kv = kv.contiguous()
        if check:
            _require_finite(kv, self.name)
        lay = self.layout(kv.shape)
        # glue: the CPU codec's factorize (torch.linalg.svd) over all layers x K/V x heads at once
        scale, a, b = _factorize(kv.reshape(n_layers * 2 * h, s, d), self.params["rank"])
        per = [scale.reshape(n_layers, 2, -1)]
        if lay.int4:
            for rows in (a.transpose(1, 2), b):
                per += [x.reshape(n_layers, 2, -1) for x in _quantize_rows(rows, lay.group, lay.sdt, 2 * n_layers)]
        else:
            per += [a.to(lay.fdt).reshape(n_layers, 2, -1), b.to(lay.fdt).reshape(n_layers, 2, -1)]
        out = torch.empty(n_layers, lay.layer_bytes, dtype=torch.uint8, device=kv.device)
        header = torch.frombuffer(bytearray(lay.header), dtype=torch.uint8).to(kv.device)
        out[:, :len(lay.header)] = header
        at = len(lay.header)
        for t in range(2):
            for part, size in zip(per, lay.per_tensor):
                out[:, at:at + size] = part[:, t].contiguous().view(torch.uint8).reshape(n_layers, size)
                at += size
        return GpuPayloads.equal_slots(out.reshape(-1), n_layers)

    # -- decode (Triton) --

    def decode(self, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype, *,
               check: bool = True) -> Decoded:
        n_layers, _, h, s, d = shape
        lay = self.layout(shape)
        data = payloads.data
        if data.numel() != n_layers * lay.layer_bytes or payloads.n_layers != n_layers:
            raise WireError(f"codec {self.name!r}: {data.numel()} payload bytes in {payloads.n_layers} layers, "
                            f"expected {n_layers} of {lay.layer_bytes} for shape {list(shape)}")
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise KVError(f"the GPU {self.name} decode writes fp16, bf16 or fp32, not {dtype}")
        if check:
            header = torch.frombuffer(bytearray(lay.header), dtype=torch.uint8).to(data.device)
            if not bool((data.view(n_layers, lay.layer_bytes)[:, :len(lay.header)] == header).all()):
                raise WireError(f"codec {self.name!r}: a payload's section table does not match shape {list(shape)}")
        out = torch.empty(shape, dtype=dtype, device=data.device)
        flag = torch.zeros(1, dtype=torch.int32, device=data.device)
        fdt = None if lay.int4 else lay.fdt
        factors = data if lay.int4 else data.view(fdt)  # sections are aligned to the factor size
        block = INTERPRETED_BLOCK_S if interpreted() else BLOCK_S
        rp = max(16, 1 << (lay.r - 1).bit_length())
        dp = max(16, 1 << (d - 1).bit_length())
        target = out.view(torch.int16) if dtype == torch.bfloat16 else out
        se = 1 if not lay.int4 else torch.empty((), dtype=lay.sdt).element_size()
        _lowrank_decode_kernel[(triton.cdiv(s, block), n_layers * 2 * h)](
            data, factors, target, flag, s, d, lay.r, h, lay.layer_bytes, lay.tensor_bytes, len(lay.header),
            lay.a_off, lay.b_off, lay.a_sc_off, lay.b_sc_off, lay.group, torch.finfo(dtype).max,
            INT4=lay.int4, F16_DOT=fdt == torch.float16, FACTOR_BYTES=1 if lay.int4 else factors.element_size(),
            SCALE_BYTES=se, SCALE_BF16=lay.int4 and lay.sdt == torch.bfloat16,
            OUT={torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}[dtype], BLOCK_S=block, RP=rp, DP=dp,
            **({} if interpreted() else {"enable_fp_fusion": False, "num_warps": DECODE_WARPS}))
        if check:
            bits = int(flag.item())
            for bit, what in ((BAD_SCALE, "corrupted per-head scales"), (BAD_CODE, "int4 code out of range"),
                              (BAD_VALUE, "payload decodes to NaN/Inf (corrupted factors or scales)")):
                if bits & bit:
                    raise WireError(f"codec {self.name!r}: {what}")
        return out

    # -- eager baseline --

    def encode_eager(self, kv: torch.Tensor, stats: Stats = None) -> GpuPayloads:
        """The CPU codec's ``encode_layer`` ops on the device, layer by layer, tensor by tensor."""
        return eager.encode_eager(self, kv, stats)

    def decode_eager(self, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype) -> Decoded:
        """The CPU codec's ``decode_layer`` ops (``reconstruct``, ``dequantize``) on the device."""
        return eager.decode_eager(self, payloads, shape, dtype)

    # -- tolerances --

    def compare(self, got: bytes, want: bytes, ctx: LayerContext, kv: LayerKV | None = None) -> tuple[int, int, int]:
        """(elements of failing (tensor, head)s, elements, largest distance in tolerance units): see the
        module docstring. ``kv``: the layer's input, for the reconstruction-error criterion."""
        h, s, d = ctx.shape
        if got == want:
            return 0, 2 * h * s * d, 0
        f32 = LayerContext(ctx.layer, ctx.n_layers, torch.float32, ctx.shape)
        xg, xc = self.codec.decode_layer(got, f32), self.codec.decode_layer(want, f32)
        differing, steps = 0, 0
        for t in range(2):
            g, c = (xg.k, xc.k) if t == 0 else (xg.v, xc.v)
            g, c = g.double().flatten(1), c.double().flatten(1)
            if kv is None:
                dist = (g - c).norm(dim=1) / c.norm(dim=1).clamp_min(1e-300)
                units = dist / DECODE_TOL
            else:
                x = (kv.k if t == 0 else kv.v).double().flatten(1)
                err_g, err_c = (x - g).norm(dim=1), (x - c).norm(dim=1)
                allowed = torch.maximum(ERROR_TOL * err_c, ERROR_FLOOR * x.norm(dim=1)).clamp_min(1e-300)
                units = (err_g - err_c).clamp_min(0) / allowed
            head_steps = torch.ceil(units).to(torch.int64)
            differing += int((head_steps > 1).sum()) * s * d
            steps = max(steps, int(head_steps.max()))
        return differing, 2 * h * s * d, steps

    def same_decode(self, got: Sequence[LayerKV], want: Sequence[LayerKV]) -> bool:
        """Within 1 ulp of the output dtype, or ``ABS_SLACK`` of the (tensor, head)'s largest |value|;
        for 16-bit outputs fewer than ``MAX_DIFFERING`` of the elements differing (module docstring)."""
        if len(got) != len(want):
            return False
        for g_layer, w_layer in zip(as_layers(list(got)), as_layers(list(want))):
            if g_layer.positions is not None or w_layer.positions is not None:
                return False
            for g, w in ((g_layer.k, w_layer.k), (g_layer.v, w_layer.v)):
                g, w = g.cpu(), w.cpu()
                if g.shape != w.shape or g.dtype != w.dtype:
                    return False
                if not decode_within_tolerance(g, w):
                    return False
        return True


def decode_within_tolerance(got: torch.Tensor, want: torch.Tensor) -> bool:
    """``same_decode``'s rule for one [heads, seq, dim] tensor (see the module docstring)."""
    g, w = got.double(), want.double()
    if not (torch.isfinite(g).all() and torch.isfinite(w).all()):
        return False
    diff = (g - w).abs()
    finfo = torch.finfo(want.dtype)
    # spacing of the output dtype at |want| (subnormals: the smallest spacing)
    ulp = finfo.eps * torch.exp2(torch.floor(torch.log2(w.abs().clamp_min(finfo.tiny))))
    head_max = w.abs().flatten(1).amax(dim=1).view(-1, *([1] * (w.dim() - 1)))
    ok = (diff <= ulp) | (diff <= ABS_SLACK * head_max)
    if not bool(ok.all()):
        return False
    if want.dtype in (torch.float16, torch.bfloat16):
        return float((got != want).float().mean()) < MAX_DIFFERING
    return True


def _factorize(x: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``codecs/svd.factorize``, with ``SVD_DRIVER`` on CUDA (the same ops around the SVD), or
    ``_factorize_gram`` where ``FACTORIZE`` says so."""
    method = FACTORIZE if FACTORIZE != "auto" else "subspace" if x.is_cuda else "svd"
    if method == "gram":
        return _factorize_gram(x, rank)
    if method == "subspace":
        return _factorize_subspace(x, rank)
    if SVD_DRIVER is None or x.device.type != "cuda":
        return factorize(x, rank)
    m, xn, r = _normalized(x, rank)
    u, sv, vh = torch.linalg.svd(xn, full_matrices=False, driver=SVD_DRIVER)
    s1 = torch.where(sv[:, 0] > 0, sv[:, 0], torch.ones_like(sv[:, 0]))
    a = (u[:, :, :r] * (sv[:, None, :r] / s1[:, None, None])).clamp_(-1.0, 1.0)
    return torch.stack((m, s1), dim=1), a.contiguous(), vh[:, :r, :].clamp(-1.0, 1.0).contiguous()




def _factorize_gram(x: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``factorize``'s (scale, A, B) from the eigendecomposition of each matrix's Gram matrix, the
    smaller of X^T X [d, d] and X X^T [s, s]: a batched matmul, one batched ``eigh`` of small symmetric
    matrices and a matmul, what a GPU does well, instead of an SVD of every [s, d] matrix. The top-r
    eigenvectors are the right (left) singular vectors; the singular values are the norms of X v (u^T X),
    not sqrt(eigenvalue), which would lose half the digits. The rank-r reconstruction is as good as the
    SVD's wherever the r-th and (r+1)-th singular values are apart by more than float32's noise on the
    Gram matrix (~1e-7 of s1^2); ``compare`` checks the reconstruction error against the CPU's."""
    m, xn, r = _normalized(x, rank)
    g = _gram(xn)
    _, vecs = torch.linalg.eigh(g)  # ascending eigenvalues
    return _from_top_vectors(m, xn, vecs[:, :, -r:].flip(-1))


def _factorize_subspace(x: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_factorize_gram`` with the top-r eigenvectors found by subspace iteration: ``SUBSPACE_ITERS``
    products of the Gram matrix with a block of ``r + OVERSAMPLE`` vectors (a fixed, seeded start),
    each re-orthonormalized by Cholesky QR (twice: float32 Cholesky QR loses orthogonality with the
    square of the block's condition number), then the Rayleigh-Ritz step: the eigendecomposition of the
    small projected matrix. Every step is batched over all (layer, K/V, head) matrices of the cache.
    Where the block would be the whole space the exact ``eigh`` of the Gram matrix is used."""
    m, xn, r = _normalized(x, rank)
    g = _gram(xn)
    n, size = g.shape[0], g.shape[-1]
    k = r + OVERSAMPLE
    if k >= size:
        _, vecs = torch.linalg.eigh(g)
        return _from_top_vectors(m, xn, vecs[:, :, -r:].flip(-1))
    gen = torch.Generator(device=g.device).manual_seed(0x5EED)
    q = _orthonormal(torch.randn(n, size, k, device=g.device, generator=gen))
    for _ in range(SUBSPACE_ITERS):
        q = _orthonormal(g @ q)
    _, w = torch.linalg.eigh(q.transpose(1, 2) @ g @ q)
    return _from_top_vectors(m, xn, q @ w[:, :, -r:].flip(-1))


def _normalized(x: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(per-matrix max |x| (1 for a zero matrix), x / that in float32, the effective rank): ``factorize``'s."""
    xf = x.float()
    m = xf.abs().amax(dim=(1, 2))
    m = torch.where(m > 0, m, torch.ones_like(m))
    return m, xf / m[:, None, None], effective_rank(rank, x.shape[1], x.shape[2])


def _gram(xn: torch.Tensor) -> torch.Tensor:
    """The smaller Gram matrix of each [s, d] matrix: X^T X [d, d] where s >= d, else X X^T [s, s]."""
    return xn.transpose(1, 2) @ xn if xn.shape[1] >= xn.shape[2] else xn @ xn.transpose(1, 2)


def _orthonormal(y: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning ``y``'s [n, m, k] (Cholesky QR, twice; a tiny diagonal shift keeps the
    Cholesky defined where a block is rank-deficient, e.g. a zero matrix)."""
    for _ in range(2):
        c = y.transpose(1, 2) @ y
        shift = 1e-7 * c.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-30)
        c = c + shift[:, None, None] * torch.eye(c.shape[-1], device=c.device, dtype=c.dtype)
        low = torch.linalg.cholesky(c)
        y = torch.linalg.solve_triangular(low, y.transpose(1, 2), upper=False).transpose(1, 2)
    return y


def _from_top_vectors(m: torch.Tensor, xn: torch.Tensor, vecs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``factorize``'s (scale, A, B) from the top-r eigenvectors ``vecs`` of ``_gram(xn)``, largest first:
    right singular vectors where s >= d (U S = X v), else left ones (S V^T = u^T X). The singular values
    are the norms of those products, not sqrt(eigenvalue), which would lose half the digits."""
    if xn.shape[1] >= xn.shape[2]:
        us = xn @ vecs  # U * S  [n, s, r]
        sv = us.norm(dim=1)
        b = vecs.transpose(1, 2)
    else:
        vs = vecs.transpose(1, 2) @ xn  # S * V^T  [n, r, d]
        sv = vs.norm(dim=2)
        b = vs / sv.clamp_min(torch.finfo(torch.float32).tiny)[:, :, None]
        us = vecs * sv[:, None, :]
    s1 = torch.where(sv[:, 0] > 0, sv[:, 0], torch.ones_like(sv[:, 0]))
    a = (us / s1[:, None, None]).clamp_(-1.0, 1.0)
    return torch.stack((m, s1), dim=1), a.contiguous(), b.clamp(-1.0, 1.0).contiguous()
