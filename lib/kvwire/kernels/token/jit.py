"""Fused Triton kernels for the per-token schemes: int8 (symmetric), int4 (min-max, packed 2/byte)
and FP8 E4M3, encode and decode, writing and reading the CPU codecs' wire payload bytes in place.

One launch covers a whole cache ``[layers, 2, heads, seq, head_dim]`` on a grid of (row block,
layer * 2 + K/V): a program owns ``BLOCK_R`` (head, token) rows of one tensor, reads each element once, reduces its row's range in registers and writes the
codes and the scale (and zero point) straight to their offsets in the payload (``layout.py``).

Bit-exactness with the CPU reference (``codecs/quant.py``, ``codecs/fp8.py``):
- divisions are correctly rounded (``div_rn``), scales are rounded to fp16 exactly as torch does;
- round-half-to-even is ``(y + 1.5 * 2**23) - 1.5 * 2**23`` (|y| < 2**22 here), and kernels are
  compiled with ``enable_fp_fusion=False`` so ``x * inv`` is rounded before that add, as on the CPU;
- decode products ``code * scale`` are exact in float32 (8 + 11 significant bits), so a fused
  multiply-add could not change them either;
- a row holding NaN gets a NaN scale (its count of ``x != x`` turns the range NaN) and Inf an
  infinite one, so the host's check of the scales refuses such a cache, as the CPU codec does;
- FP8 E4M3 and bf16 rounding are done on the float32 bit patterns (round to nearest even), not by
  the compiler's casts: Triton's CPU interpreter rounds 7.97 to 4.0 in its fp8 cast, and the same
  code must give the same bytes on the GPU and in CI's interpreter.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..jit import bf16_bits, bytes_of_words, fp16_up, rint, tensor_rows, words_of_bytes

KINDS = {"int8": 0, "int4": 1, "fp8_e4m3": 2}  # the ``KIND`` constexpr of both kernels


@triton.jit
def _to_e4m3_bits(v):
    """float32 (|v| <= 448) -> E4M3FN bit pattern (uint8 in int32), round to nearest even."""
    u = v.to(tl.int32, bitcast=True)
    sign = (u >> 24) & 0x80
    mag = u & 0x7FFFFFFF
    a = mag.to(tl.float32, bitcast=True)
    # normal range (a >= 2**-6): round the 23-bit mantissa to 3 bits on the integer pattern; a carry
    # into the exponent is the right answer; rebias 127 -> 7
    r = (mag + 0x7FFFF + ((mag >> 20) & 1)) >> 20
    normal = r - (120 << 3)
    # subnormal range: multiples of 2**-9 (a * 512 is exact, so the rounding is single)
    sub = rint(a * 512.0).to(tl.int32)
    code = tl.where(a >= 0.015625, normal, sub)
    return code | sign


@triton.jit
def _from_e4m3_bits(code):
    """E4M3FN bit pattern (int32 0..255) -> float32 (NaN for the NaN codes)."""
    sign = tl.where((code & 0x80) != 0, -1.0, 1.0)
    e = (code >> 3) & 0xF
    m = code & 0x7
    normal = (((e + 120) << 23) | (m << 20)).to(tl.float32, bitcast=True)
    val = tl.where(e == 0, m.to(tl.float32) * 0.001953125, normal)
    val = tl.where((code & 0x7F) == 0x7F, float("nan"), val)
    return sign * val


@triton.jit
def _row_index(pid, n_rows, rows_per_tensor, LAYER_BYTES, BLOCK_R: tl.constexpr):
    """Version 1's rows on a 1D grid (kept for bench/int8_encode_v2.py): (valid, row as int64, K/V 0/1,
    head*seq + token, layer's byte base)."""
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    rows64 = rows.to(tl.int64)
    layer = rows64 // (2 * rows_per_tensor)
    kv = (rows64 // rows_per_tensor) % 2
    i = rows64 % rows_per_tensor
    return row_ok, rows64, kv, i, layer * LAYER_BYTES


@triton.jit
def encode_kernel(x_ptr, u8_ptr, i32_ptr, f16_ptr, hdr_ptr, n_rows, rows_per_tensor,
                  LAYER_BYTES, CODES_OFF, CODES_STRIDE, SCALES_OFF, SCALES_STRIDE, ZEROS_OFF, HEADER_LEN,
                  D: tl.constexpr, DP: tl.constexpr, BLOCK_R: tl.constexpr, KIND: tl.constexpr,
                  WORDS: tl.constexpr, HP: tl.constexpr):
    """Rows of ``x`` [n_rows, D] -> codes, scales (and zeros) at their payload offsets.

    Offsets are run-time arguments (one compiled kernel per head_dim and codec, whatever the
    sequence length); ``*_OFF``: byte offset of K's section in a layer's payload; ``*_STRIDE``:
    bytes from K's section to V's. Row r is (layer, kv, head*seq + token) = (r // (2R), (r // R) % 2,
    r % R). A row is a tile [words, 4 bytes(, 2 nibbles)]: each 4-byte word of codes is built in
    registers and stored whole where the layout is 4-aligned (``WORDS``; the payload's sections sit
    36 or 52 bytes into a layer, after the section table), else byte by byte. The first program of
    each layer's K copies the section table (``HEADER_LEN`` bytes at ``hdr_ptr``, ``HP`` a power of two
    above it) to the layer's start: the whole encode is this one launch.
    """
    row_ok, rows64, kv, i, base = tensor_rows(rows_per_tensor, LAYER_BYTES, BLOCK_R)
    if tl.program_id(0) == 0:
        if tl.program_id(1) % 2 == 0:
            h = tl.arange(0, HP)
            tl.store(u8_ptr + base + h, tl.load(hdr_ptr + h, mask=h < HEADER_LEN), mask=h < HEADER_LEN)
    scale_at = (base + SCALES_OFF + kv * SCALES_STRIDE) // 2 + i  # float16 index
    j = tl.arange(0, 4)
    if KIND == 1:  # int4, min-max: two codes per byte, even element in the low nibble
        W: tl.constexpr = DP // 8
        w = tl.arange(0, W)
        k = tl.arange(0, 2)
        col = w[None, :, None, None] * 8 + j[None, None, :, None] * 2 + k[None, None, None, :]  # [1, W, 4, 2]
        mask = row_ok[:, None, None, None] & (col < D)
        x = tl.load(x_ptr + rows64[:, None, None, None] * D + col, mask=mask, other=0.0).to(tl.float32)
        lo = tl.min(tl.min(tl.min(tl.where(mask, x, float("inf")), axis=3), axis=2), axis=1)
        hi = tl.max(tl.max(tl.max(tl.where(mask, x, float("-inf")), axis=3), axis=2), axis=1)
        hi = hi + tl.where(tl.sum(tl.sum(tl.sum((x != x).to(tl.int32), axis=3), axis=2), axis=1) > 0, float("nan"), 0.0)
        lof = lo.to(tl.float16).to(tl.float32) + 0.0  # -0.0 -> +0.0, as codecs/quant.py
        lo16 = lof.to(tl.float16)
        scale16 = (tl.math.div_rn(hi - lof, 15.0).to(tl.float16).to(tl.float32) + 0.0).to(tl.float16)
        s = scale16.to(tl.float32)
        inv = tl.where(s > 0, tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), s), 0.0)
        c = rint((x - lof[:, None, None, None]) * inv[:, None, None, None])
        c = tl.minimum(tl.maximum(c, 0.0), 15.0).to(tl.int32)
        byte = tl.sum(c << (k * 4)[None, None, None, :], axis=3)  # [BLOCK_R, W, 4]
        at = base + CODES_OFF + kv * CODES_STRIDE + i * (D // 2)
        bmask = row_ok[:, None, None] & ((w[None, :, None] * 4 + j[None, None, :]) < D // 2)
        tl.store(f16_ptr + (base + ZEROS_OFF + kv * SCALES_STRIDE) // 2 + i, lo16, mask=row_ok)
    else:
        W: tl.constexpr = DP // 4
        w = tl.arange(0, W)
        col = w[None, :, None] * 4 + j[None, None, :]  # [1, W, 4]
        mask = row_ok[:, None, None] & (col < D)
        x = tl.load(x_ptr + rows64[:, None, None] * D + col, mask=mask, other=0.0).to(tl.float32)
        amax = tl.max(tl.max(tl.abs(x), axis=2), axis=1)  # masked lanes hold 0
        amax = amax + tl.where(tl.sum(tl.sum((x != x).to(tl.int32), axis=2), axis=1) > 0, float("nan"), 0.0)
        if KIND == 0:  # int8, symmetric: scale = amax / 127, code = rint(x / scale) in -127..127
            scale16 = tl.math.div_rn(amax, 127.0).to(tl.float16)
            s = scale16.to(tl.float32)
            inv = tl.where(s > 0, tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), s), 0.0)
            q = tl.minimum(tl.maximum(rint(x * inv[:, None, None]), -127.0), 127.0).to(tl.int32)
            byte = q & 0xFF
        else:  # fp8 e4m3: scale = amax / 448 rounded up to fp16 (1 for an all-zero row)
            s64 = tl.where(amax == 0, 1.0, amax.to(tl.float64) / 448.0)  # NaN stays NaN
            scale16 = fp16_up(s64)
            byte = _to_e4m3_bits(tl.math.div_rn(x, scale16.to(tl.float32)[:, None, None]))
        at = base + CODES_OFF + kv * CODES_STRIDE + i * D
        bmask = mask
    if WORDS:
        word = tl.sum(byte << (j * 8)[None, None, :], axis=2)  # little-endian
        tl.store(i32_ptr + (at // 4)[:, None] + w[None, :], word, mask=row_ok[:, None] & (w[None, :] < (D // 4 if KIND != 1 else D // 8)))
    else:
        tl.store(u8_ptr + at[:, None, None] + w[None, :, None] * 4 + j[None, None, :], byte.to(tl.uint8), mask=bmask)
    tl.store(f16_ptr + scale_at, scale16, mask=row_ok)


@triton.jit
def decode_kernel(u8_ptr, i32_ptr, f16_ptr, out_ptr, n_rows, rows_per_tensor,
                  LAYER_BYTES, CODES_OFF, CODES_STRIDE, SCALES_OFF, SCALES_STRIDE, ZEROS_OFF,
                  D: tl.constexpr, DP: tl.constexpr, BLOCK_R: tl.constexpr, KIND: tl.constexpr,
                  WORDS: tl.constexpr, OUT_BF16: tl.constexpr, LIMIT):
    """Payload -> rows of ``out`` [n_rows, D] (bf16 written as int16 bit patterns, or fp16); the
    same [words, 4 bytes(, 2 nibbles)] row tiles as ``encode_kernel``."""
    row_ok, rows64, kv, i, base = tensor_rows(rows_per_tensor, LAYER_BYTES, BLOCK_R)
    s = tl.load(f16_ptr + (base + SCALES_OFF + kv * SCALES_STRIDE) // 2 + i, mask=row_ok, other=0.0).to(tl.float32)
    j = tl.arange(0, 4)
    W: tl.constexpr = DP // 8 if KIND == 1 else DP // 4
    w = tl.arange(0, W)
    row_bytes: tl.constexpr = D // 2 if KIND == 1 else D
    at = base + CODES_OFF + kv * CODES_STRIDE + i * row_bytes
    if WORDS:
        word = tl.load(i32_ptr + (at // 4)[:, None] + w[None, :], mask=row_ok[:, None] & (w[None, :] < row_bytes // 4),
                       other=0)
        byte = (word[:, :, None] >> (j * 8)[None, None, :]) & 0xFF  # [BLOCK_R, W, 4]
    else:
        bcol = w[None, :, None] * 4 + j[None, None, :]
        byte = tl.load(u8_ptr + at[:, None, None] + bcol, mask=row_ok[:, None, None] & (bcol < row_bytes),
                       other=0).to(tl.int32)
    if KIND == 1:
        z = tl.load(f16_ptr + (base + ZEROS_OFF + kv * SCALES_STRIDE) // 2 + i, mask=row_ok, other=0.0)
        k = tl.arange(0, 2)
        q = ((byte[:, :, :, None] >> (k * 4)[None, None, None, :]) & 0xF).to(tl.float32)  # [BLOCK_R, W, 4, 2]
        x = q * s[:, None, None, None] + z.to(tl.float32)[:, None, None, None]
        col = w[None, :, None, None] * 8 + j[None, None, :, None] * 2 + k[None, None, None, :]
        mask = row_ok[:, None, None, None] & (col < D)
        dst = out_ptr + rows64[:, None, None, None] * D + col
    else:
        if KIND == 0:
            q = tl.where(byte >= 128, byte - 256, byte).to(tl.float32)  # signed int8
        else:
            q = _from_e4m3_bits(byte)
        x = q * s[:, None, None]
        col = w[None, :, None] * 4 + j[None, None, :]
        mask = row_ok[:, None, None] & (col < D)
        dst = out_ptr + rows64[:, None, None] * D + col
    x = tl.minimum(tl.maximum(x, -LIMIT), LIMIT)
    if OUT_BF16:
        tl.store(dst, bf16_bits(x).to(tl.int16), mask=mask)
    else:
        tl.store(dst, x.to(tl.float16), mask=mask)


# ---- flat row tiles (issue 30): [BLOCK_R, D] in and out, bytes packed into words with split / interleave ----
# The kernels above index a row as [words, 4 bytes(, 2 nibbles)]: Triton's contiguity analysis sees
# runs of 4 (or 2) elements there, so a thread loads and stores 8 (or 4) bytes of bf16 at a time.
# These take a row as one contiguous [D] run (16-byte accesses of the cache) and move between
# elements and payload words in registers (tl.split / tl.interleave on the minor dimension). Same
# arithmetic, same bytes; used where the layout allows whole-word codes (``WORDS``) and D is a power of 2.

@triton.jit
def encode_flat_kernel(x_ptr, u8_ptr, i32_ptr, f16_ptr, hdr_ptr, n_rows, rows_per_tensor,
                       LAYER_BYTES, CODES_OFF, CODES_STRIDE, SCALES_OFF, SCALES_STRIDE, ZEROS_OFF, HEADER_LEN,
                       D: tl.constexpr, BLOCK_R: tl.constexpr, KIND: tl.constexpr, HP: tl.constexpr):
    """``encode_kernel`` on flat [BLOCK_R, D] tiles (D a power of 2, codes stored as whole words)."""
    row_ok, rows64, kv, i, base = tensor_rows(rows_per_tensor, LAYER_BYTES, BLOCK_R)
    if tl.program_id(0) == 0:
        if tl.program_id(1) % 2 == 0:
            h = tl.arange(0, HP)
            tl.store(u8_ptr + base + h, tl.load(hdr_ptr + h, mask=h < HEADER_LEN), mask=h < HEADER_LEN)
    col = tl.arange(0, D)
    mask = row_ok[:, None] & (col < D)[None, :]
    x = tl.load(x_ptr + rows64[:, None] * D + col[None, :], mask=mask, other=0.0).to(tl.float32)
    nan = tl.sum((x != x).to(tl.int32), axis=1) > 0
    scale_at = (base + SCALES_OFF + kv * SCALES_STRIDE) // 2 + i
    if KIND == 1:  # int4, min-max
        lo = tl.min(tl.where(mask, x, float("inf")), axis=1)
        hi = tl.max(tl.where(mask, x, float("-inf")), axis=1) + tl.where(nan, float("nan"), 0.0)
        lof = lo.to(tl.float16).to(tl.float32) + 0.0
        scale16 = (tl.math.div_rn(hi - lof, 15.0).to(tl.float16).to(tl.float32) + 0.0).to(tl.float16)
        s = scale16.to(tl.float32)
        inv = tl.where(s > 0, tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), s), 0.0)
        c = tl.minimum(tl.maximum(rint((x - lof[:, None]) * inv[:, None]), 0.0), 15.0).to(tl.int32)
        even, odd = tl.split(tl.reshape(c, [BLOCK_R, D // 2, 2]))
        byte = even | (odd << 4)
        NBYTES: tl.constexpr = D // 2
        tl.store(f16_ptr + (base + ZEROS_OFF + kv * SCALES_STRIDE) // 2 + i, lof.to(tl.float16), mask=row_ok)
    else:
        amax = tl.max(tl.abs(x), axis=1) + tl.where(nan, float("nan"), 0.0)
        if KIND == 0:
            scale16 = tl.math.div_rn(amax, 127.0).to(tl.float16)
            s = scale16.to(tl.float32)
            inv = tl.where(s > 0, tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), s), 0.0)
            byte = tl.minimum(tl.maximum(rint(x * inv[:, None]), -127.0), 127.0).to(tl.int32) & 0xFF
        else:
            s64 = tl.where(amax == 0, 1.0, amax.to(tl.float64) / 448.0)
            scale16 = fp16_up(s64)
            byte = _to_e4m3_bits(tl.math.div_rn(x, scale16.to(tl.float32)[:, None]))
        NBYTES: tl.constexpr = D
    word = words_of_bytes(byte, BLOCK_R, NBYTES)
    at = (base + CODES_OFF + kv * CODES_STRIDE + i * NBYTES) // 4
    w = tl.arange(0, NBYTES // 4)
    tl.store(i32_ptr + at[:, None] + w[None, :], word, mask=row_ok[:, None] & (w < NBYTES // 4)[None, :])
    tl.store(f16_ptr + scale_at, scale16, mask=row_ok)


@triton.jit
def decode_flat_kernel(i32_ptr, f16_ptr, out_ptr, n_rows, rows_per_tensor,
                       LAYER_BYTES, CODES_OFF, CODES_STRIDE, SCALES_OFF, SCALES_STRIDE, ZEROS_OFF,
                       D: tl.constexpr, BLOCK_R: tl.constexpr, KIND: tl.constexpr, OUT_BF16: tl.constexpr, LIMIT):
    """``decode_kernel`` on flat [BLOCK_R, D] tiles (D a power of 2, codes read as whole words)."""
    row_ok, rows64, kv, i, base = tensor_rows(rows_per_tensor, LAYER_BYTES, BLOCK_R)
    s = tl.load(f16_ptr + (base + SCALES_OFF + kv * SCALES_STRIDE) // 2 + i, mask=row_ok, other=0.0).to(tl.float32)
    NBYTES: tl.constexpr = D // 2 if KIND == 1 else D
    w = tl.arange(0, NBYTES // 4)
    at = (base + CODES_OFF + kv * CODES_STRIDE + i * NBYTES) // 4
    word = tl.load(i32_ptr + at[:, None] + w[None, :], mask=row_ok[:, None] & (w < NBYTES // 4)[None, :], other=0)
    byte = bytes_of_words(word)
    if KIND == 1:
        z = tl.load(f16_ptr + (base + ZEROS_OFF + kv * SCALES_STRIDE) // 2 + i, mask=row_ok, other=0.0)
        q = tl.interleave(byte & 0xF, byte >> 4).to(tl.float32)
        x = q * s[:, None] + z.to(tl.float32)[:, None]
    elif KIND == 0:
        x = tl.where(byte >= 128, byte - 256, byte).to(tl.float32) * s[:, None]
    else:
        x = _from_e4m3_bits(byte) * s[:, None]
    x = tl.minimum(tl.maximum(x, -LIMIT), LIMIT)
    col = tl.arange(0, D)
    mask = row_ok[:, None] & (col < D)[None, :]
    dst = out_ptr + rows64[:, None] * D + col[None, :]
    if OUT_BF16:
        tl.store(dst, bf16_bits(x).to(tl.int16), mask=mask)
    else:
        tl.store(dst, x.to(tl.float16), mask=mask)
