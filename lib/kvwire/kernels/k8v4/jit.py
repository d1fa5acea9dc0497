"""The ``@triton.jit`` kernels of ``k8v4``: encode and decode of keys and values in one launch each
(launched by ``kernel.py``, whose docstring describes the grid and why the bytes are exact)."""

from __future__ import annotations

import triton
import triton.language as tl

from ..wordpack import float_to_bits, load_words, pack_words, quantize_rows, row_scales, store_words, unpack_words


@triton.jit
def k8v4_encode_kernel(x_ptr, u8, p16, p32, ROWS, LAYER_BYTES, KC_OFF, KS_OFF, VC_OFF, VS_OFF, VZ_OFF,
                       D: tl.constexpr, DP: tl.constexpr, BLOCK_R: tl.constexpr, SDT: tl.constexpr,
                       KG: tl.constexpr, VG: tl.constexpr, K_WORDS: tl.constexpr, V_WORDS: tl.constexpr,
                       NATIVE: tl.constexpr):
    """Rows [i0, i0 + BLOCK_R) of tensor t = layer * 2 + K/V (rows = head * seq + token): keys to
    int8 codes [BLOCK_R, DP/4, 4] and a scale per KG channels; values to packed int4 codes
    [BLOCK_R, DP/8, 8] and a scale and zero point per VG channels."""
    SW: tl.constexpr = 2 if SDT == 2 else 1
    t = tl.program_id(1)
    lb = (t // 2).to(tl.int64) * LAYER_BYTES
    i0 = tl.program_id(0).to(tl.int64) * BLOCK_R
    r = tl.arange(0, BLOCK_R)
    row_ok = i0 + r < ROWS
    src = x_ptr + (t.to(tl.int64) * ROWS + i0) * D
    if t % 2 == 0:  # keys; K and V tiles differ in shape, so nothing of either may outlive its branch
        k_col = tl.arange(0, DP // 4)[None, :, None] * 4 + tl.arange(0, 4)[None, None, :]
        k_ok = row_ok[:, None, None] & (k_col < D)
        k_x = tl.load(src + (r[:, None, None] * D + k_col), mask=k_ok, other=0.0).to(tl.float32)
        k_at = (lb + KS_OFF) // 2 + (i0 + r) * ((D // KG) * SW)
        k_c = quantize_rows(k_x, k_col < D, k_col, p16, k_at, k_at, row_ok, True, 127.0, SDT, KG, D // KG, DP != D,
                            NATIVE)
        store_words(u8, p32, lb + KC_OFF + i0 * D, r * D, pack_words(k_c, 8, 4), row_ok, D, DP // 4, K_WORDS)
    else:
        v_col = tl.arange(0, DP // 8)[None, :, None] * 8 + tl.arange(0, 8)[None, None, :]
        v_ok = row_ok[:, None, None] & (v_col < D)
        v_x = tl.load(src + (r[:, None, None] * D + v_col), mask=v_ok, other=0.0).to(tl.float32)
        v_at = (i0 + r) * ((D // VG) * SW)
        v_c = quantize_rows(v_x, v_col < D, v_col, p16, (lb + VS_OFF) // 2 + v_at, (lb + VZ_OFF) // 2 + v_at, row_ok,
                            False, 15.0, SDT, VG, D // VG, DP != D, NATIVE)
        store_words(u8, p32, lb + VC_OFF + i0 * (D // 2), r * (D // 2), pack_words(v_c, 4, 8), row_ok, D // 2,
                    DP // 8, V_WORDS)


@triton.jit
def k8v4_decode_kernel(u8, p16, p32, out_ptr, ROWS, LAYER_BYTES, KC_OFF, KS_OFF, VC_OFF, VS_OFF, VZ_OFF, LIMIT,
                       D: tl.constexpr, DP: tl.constexpr, BLOCK_R: tl.constexpr, DT: tl.constexpr,
                       SDT: tl.constexpr, KG: tl.constexpr, VG: tl.constexpr, K_WORDS: tl.constexpr,
                       V_WORDS: tl.constexpr, NATIVE: tl.constexpr, CLAMP: tl.constexpr):
    """Inverse of ``k8v4_encode_kernel`` on the same grid: keys code * scale, values code * scale +
    zero, clamped to the dtype's range where ``CLAMP`` says it can matter (``dequantize_per_token`` /
    ``dequantize``), written to ``out`` as raw bits."""
    SW: tl.constexpr = 2 if SDT == 2 else 1
    t = tl.program_id(1)
    lb = (t // 2).to(tl.int64) * LAYER_BYTES
    i0 = tl.program_id(0).to(tl.int64) * BLOCK_R
    r = tl.arange(0, BLOCK_R)
    row_ok = i0 + r < ROWS
    dst = out_ptr + (t.to(tl.int64) * ROWS + i0) * D
    if t % 2 == 0:
        k_col = tl.arange(0, DP // 4)[None, :, None] * 4 + tl.arange(0, 4)[None, None, :]
        k_at = (lb + KS_OFF) // 2 + (i0 + r) * ((D // KG) * SW)
        k_s, _ = row_scales(p16, k_at, k_at, k_col, row_ok, True, SDT, KG, D // KG)
        k_word = load_words(u8, p32, lb + KC_OFF + i0 * D, r * D, row_ok, D, DP // 4, K_WORDS)
        k_x = ((unpack_words(k_word, 8, 4) ^ 0x80) - 0x80).to(tl.float32) * k_s  # signed int8 codes
        if CLAMP:
            k_x = tl.minimum(tl.maximum(k_x, -LIMIT), LIMIT)
        tl.store(dst + (r[:, None, None] * D + k_col), float_to_bits(k_x, DT, NATIVE),
                 mask=row_ok[:, None, None] & (k_col < D))
    else:
        v_col = tl.arange(0, DP // 8)[None, :, None] * 8 + tl.arange(0, 8)[None, None, :]
        v_at = (i0 + r) * ((D // VG) * SW)
        v_s, v_z = row_scales(p16, (lb + VS_OFF) // 2 + v_at, (lb + VZ_OFF) // 2 + v_at, v_col, row_ok, False, SDT,
                              VG, D // VG)
        v_word = load_words(u8, p32, lb + VC_OFF + i0 * (D // 2), r * (D // 2), row_ok, D // 2, DP // 8, V_WORDS)
        v_x = unpack_words(v_word, 4, 8).to(tl.float32) * v_s + v_z
        if CLAMP:
            v_x = tl.minimum(tl.maximum(v_x, -LIMIT), LIMIT)
        tl.store(dst + (r[:, None, None] * D + v_col), float_to_bits(v_x, DT, NATIVE),
                 mask=row_ok[:, None, None] & (v_col < D))
