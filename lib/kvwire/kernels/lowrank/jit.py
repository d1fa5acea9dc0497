"""The ``@triton.jit`` functions of low rank: the one ``tl.dot`` decode kernel and its byte-level loads
(launched by ``kernel.py``, whose docstring gives the tolerance it is held to)."""

from __future__ import annotations

import triton
import triton.language as tl

from ..jit import bf16_bits


# ---- Triton ---------------------------------------------------------------------------------

@triton.jit
def _bytes_to_f32(u8_ptr, at):
    """A little-endian float32 at byte offset ``at`` (any alignment): four byte loads."""
    b = tl.load(u8_ptr + at + tl.arange(0, 4)).to(tl.int32)
    return tl.sum(b << (tl.arange(0, 4) * 8), axis=0).to(tl.float32, bitcast=True)


@triton.jit
def _scale_at(u8_ptr, at, ok, SCALE_BYTES: tl.constexpr, SCALE_BF16: tl.constexpr):
    """int4 group scales (fp16 / bf16 / fp32 storage, any alignment) at byte offsets ``at`` -> float32."""
    lo = tl.load(u8_ptr + at, mask=ok, other=0).to(tl.int32)
    hi = tl.load(u8_ptr + at + 1, mask=ok, other=0).to(tl.int32)
    if SCALE_BYTES == 4:
        b2 = tl.load(u8_ptr + at + 2, mask=ok, other=0).to(tl.int32)
        b3 = tl.load(u8_ptr + at + 3, mask=ok, other=0).to(tl.int32)
        v = (lo | (hi << 8) | (b2 << 16) | (b3 << 24)).to(tl.float32, bitcast=True)
    elif SCALE_BF16:
        v = ((lo | (hi << 8)) << 16).to(tl.float32, bitcast=True)  # bf16 = the top half of a float32
    else:
        v = (lo | (hi << 8)).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return v


@triton.jit
def _int4_at(u8_ptr, at, idx, ok):
    """int4 codes of flat index ``idx`` in the packed section at byte ``at`` (even index: low nibble);
    7 (zero) where not ``ok``."""
    byte = tl.load(u8_ptr + at + idx // 2, mask=ok, other=0x77).to(tl.int32)
    return (byte >> ((idx % 2) * 4)) & 0xF


@triton.jit
def _lowrank_decode_kernel(u8_ptr, f_ptr, out_ptr, flag_ptr, S, D, R, H,
                           LAYER_BYTES, TENSOR_BYTES, HDR_BYTES, A_OFF, B_OFF, A_SC_OFF, B_SC_OFF,
                           GROUP, LIMIT,
                           INT4: tl.constexpr, F16_DOT: tl.constexpr, FACTOR_BYTES: tl.constexpr,
                           SCALE_BYTES: tl.constexpr, SCALE_BF16: tl.constexpr, OUT: tl.constexpr,
                           BLOCK_S: tl.constexpr, RP: tl.constexpr, DP: tl.constexpr):
    """X_hat of rows [BLOCK_S] of one (layer, K/V, head): (A @ B) * s1 * m, clamped, in the output
    dtype (OUT 0 fp16, 1 bf16 bit patterns as int16, 2 fp32). Offsets in bytes within a tensor's
    sections (A_OFF, B_OFF: factors or codes; *_SC_OFF: int4 scales)."""
    bt = tl.program_id(1)
    lay = bt // (2 * H)
    t = (bt // H) % 2
    hh = bt % H
    sec = lay.to(tl.int64) * LAYER_BYTES + HDR_BYTES + t * TENSOR_BYTES  # this tensor's first section
    m = _bytes_to_f32(u8_ptr, sec + hh * 8)
    s1 = _bytes_to_f32(u8_ptr, sec + hh * 8 + 4)
    i = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    k = tl.arange(0, RP)
    j = tl.arange(0, DP)
    a_ok = (i[:, None] < S) & (k[None, :] < R)
    b_ok = (k[:, None] < R) & (j[None, :] < D)
    if INT4:
        # A^T rows (one per singular vector, along tokens) and B rows, 4-bit codes in groups of GROUP
        ngs = (S + GROUP - 1) // GROUP
        ngd = (D + GROUP - 1) // GROUP
        a_idx = (hh * R + k[None, :]).to(tl.int64) * S + i[:, None]
        a_code = _int4_at(u8_ptr, sec + A_OFF, a_idx, a_ok)
        a_sc = _scale_at(u8_ptr, sec + A_SC_OFF + ((hh * R + k[None, :]) * ngs + i[:, None] // GROUP) * SCALE_BYTES,
                         a_ok, SCALE_BYTES, SCALE_BF16)
        b_idx = (hh * R + k[:, None]).to(tl.int64) * D + j[None, :]
        b_code = _int4_at(u8_ptr, sec + B_OFF, b_idx, b_ok)
        b_sc = _scale_at(u8_ptr, sec + B_SC_OFF + ((hh * R + k[:, None]) * ngd + j[None, :] // GROUP) * SCALE_BYTES,
                         b_ok, SCALE_BYTES, SCALE_BF16)
        bad = tl.max(tl.max((a_code == 15).to(tl.int32), axis=1), axis=0) | \
            tl.max(tl.max((b_code == 15).to(tl.int32), axis=1), axis=0)
        a = (a_code - 7).to(tl.float32) * a_sc  # exact: quant.dequantize
        b = (b_code - 7).to(tl.float32) * b_sc
        acc = tl.dot(a, b, input_precision="ieee")
    else:
        bad = 0
        a_at = (sec + A_OFF) // FACTOR_BYTES + (hh * S).to(tl.int64) * R + i[:, None] * R + k[None, :]
        b_at = (sec + B_OFF) // FACTOR_BYTES + (hh * R).to(tl.int64) * D + k[:, None] * D + j[None, :]
        a = tl.load(f_ptr + a_at, mask=a_ok, other=0.0)
        b = tl.load(f_ptr + b_at, mask=b_ok, other=0.0)
        if F16_DOT:
            acc = tl.dot(a, b)  # fp16 products are exact in the float32 accumulator
        else:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    x = acc * s1
    x = x * m  # (A @ B) * s1 * m, two roundings, as codecs/svd.reconstruct
    o_ok = (i[:, None] < S) & (j[None, :] < D)
    nonfinite = tl.max(tl.max((((x != x) | (tl.abs(x) == float("inf"))) & o_ok).to(tl.int32), axis=1), axis=0)
    scale_bad = ((m != m) | (s1 != s1) | (m <= 0) | (s1 <= 0) | (m == float("inf")) | (s1 == float("inf"))).to(tl.int32)
    flag = bad * 1 + nonfinite * 2 + scale_bad * 4
    if flag != 0:
        tl.atomic_or(flag_ptr, flag)
    x = tl.minimum(tl.maximum(x, -LIMIT), LIMIT)
    dst = out_ptr + (bt.to(tl.int64) * S + i[:, None]) * D + j[None, :]
    if OUT == 0:
        tl.store(dst, x.to(tl.float16), mask=o_ok)
    elif OUT == 1:
        tl.store(dst, bf16_bits(x).to(tl.int16), mask=o_ok)
    else:
        tl.store(dst, x, mask=o_ok)
