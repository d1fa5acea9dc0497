"""The ``@triton.jit`` kernels of ``kivi2`` / ``kivi4``: keys and values, encode and decode (launched by
``kernel.py``, whose docstring describes the grids and why the bytes are exact)."""

from __future__ import annotations

import triton
import triton.language as tl

from ..wordpack import (float_to_bits, load_item, load_scale, load_words, minmax_codes, minmax_params, nanmax,
                        pack_words, quantize_rows, row_scales, store_item, store_scale, store_words, unpack_words)


@triton.jit
def keys_encode_kernel(x_ptr, raw_ptr, u8, p16, p32, H, S, N_K, N_GROUPS, N_CB, LAYER_BYTES, KC_OFF, KS_OFF, KZ_OFF,
                       KR_OFF, D: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, CB: tl.constexpr,
                       BITS: tl.constexpr, DT: tl.constexpr, SDT: tl.constexpr, WORDS: tl.constexpr,
                       NATIVE: tl.constexpr):
    """Keys of one (layer, head): program (chunk * N_CB + channel block, layer * H + head) holds
    tokens [chunk * G, chunk * G + G) x channels [cb * CB, cb * CB + CB) as a [GP, W, E] tile.
    Chunks below N_GROUPS are quantized per channel (``x_ptr``: the cache in its dtype); the rest
    are the key residual, copied as raw bits (``raw_ptr``: the same memory as int16/int32)."""
    E: tl.constexpr = 32 // BITS
    W: tl.constexpr = CB // E
    QMAX: tl.constexpr = (1 << BITS) - 1.0
    SW: tl.constexpr = 2 if SDT == 2 else 1  # int16 units per scale (SW) and per cache element (IW)
    IW: tl.constexpr = 2 if DT == 2 else 1
    ROW_BYTES: tl.constexpr = D * BITS // 8
    CB_BYTES: tl.constexpr = CB * BITS // 8
    chunk = tl.program_id(0) // N_CB
    cb = tl.program_id(0) % N_CB
    layer = (tl.program_id(1) // H).to(tl.int64)
    head = (tl.program_id(1) % H).to(tl.int64)
    t0 = chunk * G
    r = tl.arange(0, GP)
    ch = cb * CB + tl.arange(0, W)[:, None] * E + tl.arange(0, E)[None, :]  # [W, E] channels
    col = ch[None, :, :]
    row_ok = (r < G) & (t0 + r < S)
    ok = row_ok[:, None, None] & (col < D)
    base_x = ((layer * 2) * H + head) * S * D + t0 * D  # int64 scalar; per-element offsets stay int32
    off = r[:, None, None] * D + col
    lb = layer * LAYER_BYTES
    if chunk < N_GROUPS:
        x = tl.load(x_ptr + base_x + off, mask=ok, other=0.0).to(tl.float32)
        if GP == G:  # every token row is real (padded channels only spoil their own, unstored, scales)
            lo = tl.min(x, axis=0)
            hi = nanmax(x, 0, NATIVE)
        else:
            lo = tl.min(tl.where(ok, x, float("inf")), axis=0)
            hi = nanmax(tl.where(ok, x, float("-inf")), 0, NATIVE)
        z, s, inv = minmax_params(lo, hi, QMAX, SDT)
        c = minmax_codes(x, z[None, :, :], inv[None, :, :], QMAX, NATIVE)
        base = lb + KC_OFF + (head * N_K + t0) * ROW_BYTES + cb * CB_BYTES
        store_words(u8, p32, base, r * ROW_BYTES, pack_words(c, BITS, E), row_ok, ROW_BYTES - cb * CB_BYTES, W, WORDS)
        at = ((head * N_GROUPS + chunk) * D + ch) * SW  # [W, E] scale index, int16 units
        store_scale(p16, (lb + KS_OFF) // 2 + at, s, ch < D, SDT)
        store_scale(p16, (lb + KZ_OFF) // 2 + at, z, ch < D, SDT)
    else:
        res_at = (lb + KR_OFF) // 2 + ((head * (S - N_K) + t0 - N_K) * D) * IW
        store_item(p16, res_at + off * IW, tl.load(raw_ptr + base_x + off, mask=ok, other=0), ok, DT == 2)


@triton.jit
def keys_decode_kernel(u8, p16, p32, out_ptr, H, S, N_K, N_GROUPS, N_CB, LAYER_BYTES, KC_OFF, KS_OFF, KZ_OFF, KR_OFF,
                       LIMIT, D: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, CB: tl.constexpr,
                       BITS: tl.constexpr, DT: tl.constexpr, SDT: tl.constexpr, WORDS: tl.constexpr,
                       NATIVE: tl.constexpr, CLAMP: tl.constexpr):
    """Inverse of ``keys_encode_kernel`` on the same grid: codes * scale + zero (clamped to the
    dtype's range as ``dequantize`` does, where ``CLAMP`` says it can matter), or the residual's raw
    bits, into ``out`` (raw view)."""
    E: tl.constexpr = 32 // BITS
    W: tl.constexpr = CB // E
    SW: tl.constexpr = 2 if SDT == 2 else 1
    IW: tl.constexpr = 2 if DT == 2 else 1
    ROW_BYTES: tl.constexpr = D * BITS // 8
    CB_BYTES: tl.constexpr = CB * BITS // 8
    chunk = tl.program_id(0) // N_CB
    cb = tl.program_id(0) % N_CB
    layer = (tl.program_id(1) // H).to(tl.int64)
    head = (tl.program_id(1) % H).to(tl.int64)
    t0 = chunk * G
    r = tl.arange(0, GP)
    ch = cb * CB + tl.arange(0, W)[:, None] * E + tl.arange(0, E)[None, :]
    col = ch[None, :, :]
    row_ok = (r < G) & (t0 + r < S)
    ok = row_ok[:, None, None] & (col < D)
    off = r[:, None, None] * D + col
    dst = out_ptr + (((layer * 2) * H + head) * S * D + t0 * D) + off
    lb = layer * LAYER_BYTES
    if chunk < N_GROUPS:
        at = ((head * N_GROUPS + chunk) * D + ch) * SW
        s = load_scale(p16, (lb + KS_OFF) // 2 + at, ch < D, SDT)
        z = load_scale(p16, (lb + KZ_OFF) // 2 + at, ch < D, SDT)
        base = lb + KC_OFF + (head * N_K + t0) * ROW_BYTES + cb * CB_BYTES
        word = load_words(u8, p32, base, r * ROW_BYTES, row_ok, ROW_BYTES - cb * CB_BYTES, W, WORDS)
        x = unpack_words(word, BITS, E).to(tl.float32) * s[None, :, :] + z[None, :, :]
        if CLAMP:
            x = tl.minimum(tl.maximum(x, -LIMIT), LIMIT)
        tl.store(dst, float_to_bits(x, DT, NATIVE), mask=ok)
    else:
        res_at = (lb + KR_OFF) // 2 + ((head * (S - N_K) + t0 - N_K) * D) * IW
        tl.store(dst, load_item(p16, res_at + off * IW, ok, DT == 2), mask=ok)


@triton.jit
def values_encode_kernel(x_ptr, raw_ptr, u8, p16, p32, H, S, N_V, LAYER_BYTES, VC_OFF, VS_OFF, VZ_OFF, VR_OFF,
                         D: tl.constexpr, DPE: tl.constexpr, BLOCK_R: tl.constexpr, BITS: tl.constexpr,
                         DT: tl.constexpr, SDT: tl.constexpr, VG: tl.constexpr, NGV: tl.constexpr,
                         WORDS: tl.constexpr, NATIVE: tl.constexpr):
    """Values of one (layer, head): program (token block, layer * H + head) holds BLOCK_R tokens as
    a [BLOCK_R, W, E] tile; tokens below N_V are quantized per token (NGV groups of VG channels),
    the rest are the value residual, copied raw."""
    E: tl.constexpr = 32 // BITS
    W: tl.constexpr = DPE // E
    QMAX: tl.constexpr = (1 << BITS) - 1.0
    SW: tl.constexpr = 2 if SDT == 2 else 1
    IW: tl.constexpr = 2 if DT == 2 else 1
    ROW_BYTES: tl.constexpr = D * BITS // 8
    layer = (tl.program_id(1) // H).to(tl.int64)
    head = (tl.program_id(1) % H).to(tl.int64)
    t0 = tl.program_id(0) * BLOCK_R
    r = tl.arange(0, BLOCK_R)
    col = tl.arange(0, W)[None, :, None] * E + tl.arange(0, E)[None, None, :]
    row_ok = t0 + r < S
    ok = row_ok[:, None, None] & (col < D)
    base_x = ((layer * 2 + 1) * H + head) * S * D + t0 * D
    off = r[:, None, None] * D + col
    lb = layer * LAYER_BYTES
    # each branch loads its own rows (every element still read once): raw bits kept live across the
    # quantization for the residual's sake would cost registers in every program
    if t0 < N_V:
        q_ok = row_ok & (t0 + r < N_V)
        at = (head * N_V + t0) * (NGV * SW) + r * (NGV * SW)
        x = tl.load(x_ptr + base_x + off, mask=ok & q_ok[:, None, None], other=0.0).to(tl.float32)
        c = quantize_rows(x, col < D, col, p16, (lb + VS_OFF) // 2 + at, (lb + VZ_OFF) // 2 + at, q_ok, False, QMAX,
                          SDT, VG, NGV, DPE != D, NATIVE)
        base = lb + VC_OFF + (head * N_V + t0) * ROW_BYTES
        store_words(u8, p32, base, r * ROW_BYTES, pack_words(c, BITS, E), q_ok, ROW_BYTES, W, WORDS)
    if t0 + BLOCK_R > N_V:
        res_ok = ok & (t0 + r >= N_V)[:, None, None]
        res_at = (lb + VR_OFF) // 2 + ((head * (S - N_V) + t0 - N_V) * D) * IW
        store_item(p16, res_at + off * IW, tl.load(raw_ptr + base_x + off, mask=res_ok, other=0), res_ok, DT == 2)


@triton.jit
def values_decode_kernel(u8, p16, p32, out_ptr, H, S, N_V, LAYER_BYTES, VC_OFF, VS_OFF, VZ_OFF, VR_OFF, LIMIT,
                         D: tl.constexpr, DPE: tl.constexpr, BLOCK_R: tl.constexpr, BITS: tl.constexpr,
                         DT: tl.constexpr, SDT: tl.constexpr, VG: tl.constexpr, NGV: tl.constexpr,
                         WORDS: tl.constexpr, NATIVE: tl.constexpr, CLAMP: tl.constexpr):
    """Inverse of ``values_encode_kernel`` on the same grid."""
    E: tl.constexpr = 32 // BITS
    W: tl.constexpr = DPE // E
    SW: tl.constexpr = 2 if SDT == 2 else 1
    IW: tl.constexpr = 2 if DT == 2 else 1
    ROW_BYTES: tl.constexpr = D * BITS // 8
    layer = (tl.program_id(1) // H).to(tl.int64)
    head = (tl.program_id(1) % H).to(tl.int64)
    t0 = tl.program_id(0) * BLOCK_R
    r = tl.arange(0, BLOCK_R)
    col = tl.arange(0, W)[None, :, None] * E + tl.arange(0, E)[None, None, :]
    row_ok = t0 + r < S
    ok = row_ok[:, None, None] & (col < D)
    off = r[:, None, None] * D + col
    dst = out_ptr + (((layer * 2 + 1) * H + head) * S * D + t0 * D) + off
    lb = layer * LAYER_BYTES
    if t0 < N_V:
        q_ok = row_ok & (t0 + r < N_V)
        at = (head * N_V + t0) * (NGV * SW) + r * (NGV * SW)
        s, z = row_scales(p16, (lb + VS_OFF) // 2 + at, (lb + VZ_OFF) // 2 + at, col, q_ok, False, SDT, VG, NGV)
        base = lb + VC_OFF + (head * N_V + t0) * ROW_BYTES
        word = load_words(u8, p32, base, r * ROW_BYTES, q_ok, ROW_BYTES, W, WORDS)
        x = unpack_words(word, BITS, E).to(tl.float32) * s + z
        if CLAMP:
            x = tl.minimum(tl.maximum(x, -LIMIT), LIMIT)
        tl.store(dst, float_to_bits(x, DT, NATIVE), mask=ok & q_ok[:, None, None])
    if t0 + BLOCK_R > N_V:
        res_ok = ok & (t0 + r >= N_V)[:, None, None]
        res_at = (lb + VR_OFF) // 2 + ((head * (S - N_V) + t0 - N_V) * D) * IW
        tl.store(dst, load_item(p16, res_at + off * IW, res_ok, DT == 2), mask=res_ok)
