"""``@triton.jit`` helpers shared by several kernel families: integer rounding, bf16 and fp16 rounding
on bit patterns (the compiler's casts round differently in Triton's interpreter), and the rows a
program owns on the per-token grid (row block, layer * 2 + K/V)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def rint(y):
    return (y + 12582912.0) - 12582912.0  # 1.5 * 2**23: round to an integer, ties to even


@triton.jit
def bf16_bits(x):
    """float32 -> bf16 bit pattern (int32), round to nearest even (finite inputs)."""
    u = x.to(tl.int32, bitcast=True)
    return (u + 0x7FFF + ((u >> 16) & 1)) >> 16


@triton.jit
def fp16_up(s64):
    """Positive float64 -> the smallest float16 >= it (``codecs/fp8.round_up_to``)."""
    st = s64.to(tl.float16)
    low = st.to(tl.float64) < s64
    return tl.where(low, (st.to(tl.int16, bitcast=True) + 1).to(tl.float16, bitcast=True), st)


@triton.jit
def tensor_rows(rows_per_tensor, LAYER_BYTES, BLOCK_R: tl.constexpr):
    """A program's rows on the grid (row block, layer * 2 + K/V): (valid, row as int64, K/V 0/1,
    head*seq + token as int64, layer's byte base). One division per program and none per row: the
    per-row int64 div/mod of ``_row_index`` cost a third of the time (bench/NOTES.md, version 2)."""
    t = tl.program_id(1)
    i = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    return i < rows_per_tensor, t.to(tl.int64) * rows_per_tensor + i, t % 2, i, (t // 2).to(tl.int64) * LAYER_BYTES


@triton.jit
def bytes_of_words(word):
    """[R, W] int32 words -> [R, 4W] their bytes (0..255) in memory order (little-endian)."""
    b0 = word & 0xFF
    b1 = (word >> 8) & 0xFF
    b2 = (word >> 16) & 0xFF
    b3 = (word >> 24) & 0xFF
    return tl.interleave(tl.interleave(b0, b2), tl.interleave(b1, b3))


@triton.jit
def words_of_bytes(byte, R: tl.constexpr, NBYTES: tl.constexpr):
    """[R, NBYTES] bytes (int32 0..255) -> [R, NBYTES // 4] little-endian int32 words."""
    lo, hi = tl.split(tl.reshape(byte, [R, NBYTES // 2, 2]))
    half = lo | (hi << 8)
    lo, hi = tl.split(tl.reshape(half, [R, NBYTES // 4, 2]))
    return lo | (hi << 16)
