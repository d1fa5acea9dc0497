"""Triton kernels for the int8 / int4 granularities the per-token kernels leave out, and FP8 E5M2.

``granular.py`` launches them; this module holds only the ``@triton.jit`` code. Two families:

- **Row kernels** (``group_encode_kernel`` / ``group_decode_kernel``): every scale covers one
  contiguous run of ``G`` elements (a group of ``group_size`` head_dim elements of one token; a whole
  token when ``G = head_dim``). A tensor ``[heads, seq, head_dim]`` is then simply ``heads * seq *
  head_dim / G`` rows of ``G``, and its scales lie in row order, so the per-token kernels' shape
  carries over: a grid of (row block, layer * 2 + K/V), one read of each element, the row's range
  reduced in registers, codes and scales written straight to their payload offsets.
- **Channel kernels**: one scale per (head, channel) over the whole sequence, so the range needs a
  reduction over all tokens first. ``channel_reduce_kernel`` (grid: token chunk x (layer, K/V,
  head)) writes each chunk's per-channel max (and min) to a float32 scratch buffer,
  ``channel_scale_kernel`` (one program per (layer, K/V, head)) combines the chunks, writes the
  scales (and zero points) to the payload and the reciprocals to a scratch buffer, and
  ``channel_encode_kernel`` (grid: token block x (layer, K/V, head), run back to front) reads the
  cache a second time and writes the codes. max / min are exact in any order, so chunking changes
  no byte.

Tiles are ``[rows, words, 4 bytes, P]`` with ``P`` codes per byte (2 for int4, else 1): a 4-byte
word of codes is built in registers and stored whole where the layout is 4-aligned (``WORDS``),
else byte by byte. Scales and zeros are stored as their bit patterns, natively (``SALIGN``: 2- or
4-aligned in every layer) or byte by byte (an int8 codes section of odd length misaligns them).

Constexpr codes: ``KIND`` 0 int8, 1 int4, 2 FP8 E5M2; ``SDT`` (scale dtype) 0 float16, 1 bfloat16,
2 float32; ``OUT`` (decoded dtype) the same numbering. ``NB`` bytes per stored scale.

Bit-exactness with ``codecs/quant.py`` (see ``token/jit.py`` for the tricks): correctly rounded
divisions (``div_rn``), ``rint`` round-half-even, no FMA contraction (``granular._fp_args``),
bf16 rounding on bit patterns (the same RNE torch uses; NaN and overflow come out as torch's),
``+ 0.0`` where the CPU adds it (a -0.0 zero point or scale is written as +0.0), and a NaN counter
per range so a NaN input gives a NaN scale, which the host check then refuses, as the CPU does.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..jit import bf16_bits, bytes_of_words, fp16_up, rint, tensor_rows, words_of_bytes

KINDS = {"int8": 0, "int4": 1, "fp8_e5m2": 2}
SDTS = {"float16": 0, "bfloat16": 1, "float32": 2}


# ---- scale dtype: rounding, bit patterns, stores and loads -----------------------------------------

@triton.jit
def _round_sdt(v, SDT: tl.constexpr):
    """float32 -> float32 holding ``v`` rounded to the scale dtype (round to nearest even)."""
    if SDT == 0:
        return v.to(tl.float16).to(tl.float32)
    elif SDT == 1:
        return (bf16_bits(v) << 16).to(tl.float32, bitcast=True)
    else:
        return v


@triton.jit
def _sdt_bits(v, SDT: tl.constexpr):
    """A float32 exactly representable in the scale dtype -> its bit pattern (int32, low NB bytes)."""
    if SDT == 0:
        return v.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    elif SDT == 1:
        return (v.to(tl.int32, bitcast=True) >> 16) & 0xFFFF
    else:
        return v.to(tl.int32, bitcast=True)


@triton.jit
def _sdt_value(bits, SDT: tl.constexpr):
    """A scale dtype's bit pattern (int32) -> its value as float32."""
    if SDT == 0:
        return bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    elif SDT == 1:
        return (bits << 16).to(tl.float32, bitcast=True)
    else:
        return bits.to(tl.float32, bitcast=True)


@triton.jit
def _store_bits(u8_ptr, i16_ptr, i32_ptr, at, bits, mask, NB: tl.constexpr, ALIGNED: tl.constexpr):
    """Store the low ``NB`` bytes of ``bits`` (int32) at byte offset ``at``, little-endian."""
    if ALIGNED:
        if NB == 2:
            tl.store(i16_ptr + at // 2, bits.to(tl.int16), mask=mask)
        else:
            tl.store(i32_ptr + at // 4, bits, mask=mask)
    else:
        for b in tl.static_range(NB):
            tl.store(u8_ptr + at + b, ((bits >> (8 * b)) & 0xFF).to(tl.uint8), mask=mask)


@triton.jit
def _load_bits(u8_ptr, i16_ptr, i32_ptr, at, mask, NB: tl.constexpr, ALIGNED: tl.constexpr):
    """The ``NB``-byte little-endian pattern at byte offset ``at`` as int32 (0 where masked)."""
    if ALIGNED:
        if NB == 2:
            return tl.load(i16_ptr + at // 2, mask=mask, other=0).to(tl.int32) & 0xFFFF
        else:
            return tl.load(i32_ptr + at // 4, mask=mask, other=0)
    else:
        bits = tl.load(u8_ptr + at, mask=mask, other=0).to(tl.int32)
        for b in tl.static_range(1, NB):
            bits = bits | (tl.load(u8_ptr + at + b, mask=mask, other=0).to(tl.int32) << (8 * b))
        return bits


# ---- the quantizer's arithmetic (codecs/quant.py, codecs/fp8.py) ------------------------------------

@triton.jit
def _recip(s):
    # (1 / 1 where the scale is not positive: no division by zero, which the interpreter warns about)
    return tl.where(s > 0, tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), tl.where(s > 0, s, 1.0)), 0.0)


@triton.jit
def _sym_scale(amax, QMAX: tl.constexpr, SDT: tl.constexpr):
    """(scale, 1 / scale or 0): ``(amax / qmax).to(scale_dtype)``, as quant.quantize."""
    s = _round_sdt(tl.math.div_rn(amax, QMAX), SDT)
    return s, _recip(s)


@triton.jit
def _asym_scale(lo, hi, QMAX: tl.constexpr, SDT: tl.constexpr):
    """(zero point, scale, 1 / scale or 0) from a range, as quant.quantize (``+ 0.0`` included)."""
    lof = _round_sdt(lo, SDT) + 0.0
    s = _round_sdt(tl.math.div_rn(hi - lof, QMAX), SDT) + 0.0
    return lof, s, _recip(s)


@triton.jit
def _int_codes(x, lof, inv, QMAX: tl.constexpr, SYM: tl.constexpr, KIND: tl.constexpr):
    """Codes as their payload bits (int32): int8 symmetric signed (two's complement byte), int4
    symmetric offset by qmax (0..14), asymmetric 0..qmax."""
    if SYM:
        q = tl.minimum(tl.maximum(rint(x * inv), -QMAX), QMAX)
        if KIND == 0:
            return q.to(tl.int32) & 0xFF
        else:
            return (q + QMAX).to(tl.int32)
    else:
        return tl.minimum(tl.maximum(rint((x - lof) * inv), 0.0), QMAX).to(tl.int32)


@triton.jit
def _dequant(q, s, z, QMAX: tl.constexpr, SYM: tl.constexpr, KIND: tl.constexpr):
    """Payload code bits (int32) -> float32, as the CPU decode: ``code * scale (+ zero)``."""
    if KIND == 2:
        return _from_e5m2_bits(q) * s
    elif SYM:
        if KIND == 0:
            return tl.where(q >= 128, q - 256, q).to(tl.float32) * s
        else:
            return (q.to(tl.float32) - QMAX) * s
    else:
        return q.to(tl.float32) * s + z


@triton.jit
def _to_e5m2_bits(v):
    """float32 (|v| <= 57344) -> E5M2 bit pattern (int32 0..255), round to nearest even: torch's
    ``fp8e5m2_from_fp32_value`` (normal: round the mantissa on the bit pattern, rebias 127 -> 15;
    subnormal, below 2**-14: multiples of 2**-16, ``a * 65536`` exact so the rounding is single)."""
    u = v.to(tl.int32, bitcast=True)
    sign = (u >> 24) & 0x80
    mag = u & 0x7FFFFFFF
    a = mag.to(tl.float32, bitcast=True)
    normal = ((mag + 0xFFFFF + ((mag >> 21) & 1)) >> 21) - (112 << 2)
    sub = rint(tl.minimum(a, 6.103515625e-05) * 65536.0).to(tl.int32)  # (min: no int overflow where unused)
    return tl.where(a >= 6.103515625e-05, normal, sub) | sign


@triton.jit
def _from_e5m2_bits(code):
    """E5M2 bit pattern (int32 0..255) -> float32 (Inf / NaN for those codes, as torch's table)."""
    sign = tl.where((code & 0x80) != 0, -1.0, 1.0)
    e = (code >> 2) & 0x1F
    m = code & 0x3
    normal = (((e + 112) << 23) | (m << 21)).to(tl.float32, bitcast=True)
    val = tl.where(e == 0, m.to(tl.float32) * 1.52587890625e-05, normal)
    val = tl.where(e == 31, tl.where(m == 0, float("inf"), float("nan")), val)
    return sign * val


@triton.jit
def _out_store(dst, x, mask, OUT: tl.constexpr, LIMIT):
    """Clamp to the output dtype's range (a rounded-up scale may pass it) and store."""
    x = tl.minimum(tl.maximum(x, -LIMIT), LIMIT)
    if OUT == 0:
        tl.store(dst, x.to(tl.float16), mask=mask)
    elif OUT == 1:
        tl.store(dst, bf16_bits(x).to(tl.int16), mask=mask)
    else:
        tl.store(dst, x, mask=mask)


@triton.jit
def _fixed_bytes(u8_ptr, hdr_ptr, base, codes_at, write_header, PAD_AT, PAD_N, HEADER: tl.constexpr):
    """A layer's section table (where ``write_header``) and the zero bytes ``bitpack.pack`` pads a
    packed codes section with: what no element's program writes. Called by one program per tensor."""
    # (a limit, not ``mask & flag``: the interpreter turns a vector & a scalar bool into integers)
    hj = tl.arange(0, 64)
    hm = hj < HEADER * write_header.to(tl.int32)
    tl.store(u8_ptr + base + hj, tl.load(hdr_ptr + hj, mask=hm, other=0), mask=hm)
    pj = tl.arange(0, 4)
    tl.store(u8_ptr + codes_at + PAD_AT + pj, tl.zeros([4], tl.uint8), mask=pj < PAD_N)


@triton.jit
def _code_tile(W: tl.constexpr, P: tl.constexpr):
    """Column of each lane of a row tile ``[1, W words, 4 bytes, P codes]`` and the index vectors."""
    w = tl.arange(0, W)
    j = tl.arange(0, 4)
    k = tl.arange(0, P)
    col = (w[None, :, None, None] * 4 + j[None, None, :, None]) * P + k[None, None, None, :]
    return w, j, k, col


@triton.jit
def _store_codes(u8_ptr, i32_ptr, at, c, k, w, j, row_ok, ROW_BYTES: tl.constexpr, WORDS: tl.constexpr):
    """Codes ``c`` [R, W, 4, P] of rows whose bytes start at ``at`` [R] -> the payload."""
    byte = tl.sum(c << (k * 4)[None, None, None, :], axis=3)  # [R, W, 4]: even code in the low nibble
    if WORDS:
        word = tl.sum(byte << (j * 8)[None, None, :], axis=2)  # little-endian
        tl.store(i32_ptr + (at // 4)[:, None] + w[None, :], word, mask=row_ok[:, None] & (w[None, :] < ROW_BYTES // 4))
    else:
        b = w[None, :, None] * 4 + j[None, None, :]
        tl.store(u8_ptr + at[:, None, None] + b, byte.to(tl.uint8), mask=row_ok[:, None, None] & (b < ROW_BYTES))


@triton.jit
def _load_codes(u8_ptr, i32_ptr, at, k, w, j, row_ok, P: tl.constexpr, ROW_BYTES: tl.constexpr,
                WORDS: tl.constexpr):
    """Code bits [R, W, 4, P] (int32) of rows whose bytes start at ``at`` [R]."""
    if WORDS:
        word = tl.load(i32_ptr + (at // 4)[:, None] + w[None, :], mask=row_ok[:, None] & (w[None, :] < ROW_BYTES // 4),
                       other=0)
        byte = (word[:, :, None] >> (j * 8)[None, None, :]) & 0xFF
    else:
        b = w[None, :, None] * 4 + j[None, None, :]
        byte = tl.load(u8_ptr + at[:, None, None] + b, mask=row_ok[:, None, None] & (b < ROW_BYTES),
                       other=0).to(tl.int32)
    return (byte[:, :, :, None] >> (k * 4)[None, None, None, :]) & (0xF if P == 2 else 0xFF)


@triton.jit
def channel_decode_flat_kernel(u8_ptr, i16_ptr, i32_ptr, out_ptr, seq, heads,
                               LAYER_BYTES, CODES_OFF, CODES_STRIDE, SCALES_OFF, SCALES_STRIDE, ZEROS_OFF, LIMIT,
                               D: tl.constexpr, BLOCK_S: tl.constexpr, KIND: tl.constexpr, SYM: tl.constexpr,
                               QMAX: tl.constexpr, SDT: tl.constexpr, NB: tl.constexpr, SALIGN: tl.constexpr,
                               OUT: tl.constexpr):
    """``channel_decode_kernel`` on flat [BLOCK_S, D] tiles (issue 30): rows read as whole words, their
    bytes (and nibbles) spread to element order in registers, every row stored as one contiguous [D] run
    (16-byte stores, where the [words, 4 bytes, P codes] tiles store 2 or 4 bytes at a time). Needs D a
    power of two and whole-word code rows (``WORDS``)."""
    ok, s, th, kv, h, base = _slab_rows(seq, heads, LAYER_BYTES, BLOCK_S, False)
    P: tl.constexpr = 2 if KIND == 1 else 1
    ROW_BYTES: tl.constexpr = D // P
    col = tl.arange(0, D)
    unit = base + kv * SCALES_STRIDE + (h * D + col).to(tl.int64) * NB
    sc = _sdt_value(_load_bits(u8_ptr, i16_ptr, i32_ptr, unit + SCALES_OFF, col < D, NB, SALIGN), SDT)
    if SYM:
        z = sc * 0.0
    else:
        z = _sdt_value(_load_bits(u8_ptr, i16_ptr, i32_ptr, unit + ZEROS_OFF, col < D, NB, SALIGN), SDT)
    at = (base + CODES_OFF + kv * CODES_STRIDE + (h * seq + s).to(tl.int64) * ROW_BYTES) // 4
    wi = tl.arange(0, ROW_BYTES // 4)
    word = tl.load(i32_ptr + at[:, None] + wi[None, :], mask=ok[:, None] & (wi < ROW_BYTES // 4)[None, :], other=0)
    byte = bytes_of_words(word)
    if KIND == 1:
        q = tl.interleave(byte & 0xF, byte >> 4)
    else:
        q = byte
    x = _dequant(q, sc[None, :], z[None, :], QMAX, SYM, KIND)
    _out_store(out_ptr + (th * seq + s)[:, None] * D + col[None, :], x, ok[:, None] & (col < D)[None, :], OUT, LIMIT)


# ---- row kernels: groups of G consecutive elements (group granularity, token granularity, FP8) -------

@triton.jit
def group_encode_kernel(x_ptr, u8_ptr, i16_ptr, i32_ptr, hdr_ptr, rows_per_tensor,
                        LAYER_BYTES, CODES_OFF, CODES_STRIDE, SCALES_OFF, SCALES_STRIDE, ZEROS_OFF, PAD_AT, PAD_N,
                        G: tl.constexpr, GP: tl.constexpr, BLOCK_R: tl.constexpr, KIND: tl.constexpr,
                        SYM: tl.constexpr, QMAX: tl.constexpr, SDT: tl.constexpr, NB: tl.constexpr,
                        SALIGN: tl.constexpr, WORDS: tl.constexpr, HEADER: tl.constexpr):
    """Rows of ``G`` elements of ``x`` [layers * 2, rows_per_tensor, G] -> codes, scales (and zero
    points) at their payload offsets; programs of row block 0 also write the section table and pad."""
    row_ok, rows64, kv, i, base = tensor_rows(rows_per_tensor, LAYER_BYTES, BLOCK_R)
    P: tl.constexpr = 2 if KIND == 1 else 1
    W: tl.constexpr = GP // (4 * P)
    ROW_BYTES: tl.constexpr = G // P
    w, j, k, col = _code_tile(W, P)
    mask = row_ok[:, None, None, None] & (col < G)
    x = tl.load(x_ptr + rows64[:, None, None, None] * G + col, mask=mask, other=0.0).to(tl.float32)
    nan = tl.max(tl.max(tl.max((x != x).to(tl.int32), axis=3), axis=2), axis=1) > 0
    scale_at = base + SCALES_OFF + kv * SCALES_STRIDE + i * NB
    if KIND == 2:  # FP8 E5M2: scale = amax / 57344 rounded up to fp16 (1 for an all-zero row)
        amax = tl.max(tl.max(tl.max(tl.abs(x), axis=3), axis=2), axis=1) + tl.where(nan, float("nan"), 0.0)
        s = fp16_up(tl.where(amax == 0, 1.0, amax.to(tl.float64) / 57344.0)).to(tl.float32)  # NaN stays NaN
        c = _to_e5m2_bits(tl.math.div_rn(x, s[:, None, None, None]))
    elif SYM:
        amax = tl.max(tl.max(tl.max(tl.abs(x), axis=3), axis=2), axis=1) + tl.where(nan, float("nan"), 0.0)
        s, inv = _sym_scale(amax, QMAX, SDT)
        c = _int_codes(x, 0.0, inv[:, None, None, None], QMAX, SYM, KIND)
    else:
        lo = tl.min(tl.min(tl.min(tl.where(mask, x, float("inf")), axis=3), axis=2), axis=1)
        hi = tl.max(tl.max(tl.max(tl.where(mask, x, float("-inf")), axis=3), axis=2), axis=1)
        lo = tl.where(row_ok, lo, 0.0)  # rows past the end: no inf - inf (the interpreter warns)
        hi = tl.where(row_ok, hi, 0.0)
        lof, s, inv = _asym_scale(lo, hi + tl.where(nan, float("nan"), 0.0), QMAX, SDT)
        c = _int_codes(x, lof[:, None, None, None], inv[:, None, None, None], QMAX, SYM, KIND)
        _store_bits(u8_ptr, i16_ptr, i32_ptr, base + ZEROS_OFF + kv * SCALES_STRIDE + i * NB, _sdt_bits(lof, SDT),
                    row_ok, NB, SALIGN)
    codes_at = base + CODES_OFF + kv * CODES_STRIDE
    _store_codes(u8_ptr, i32_ptr, codes_at + i * ROW_BYTES, c, k, w, j, row_ok, ROW_BYTES, WORDS)
    _store_bits(u8_ptr, i16_ptr, i32_ptr, scale_at, _sdt_bits(s, SDT), row_ok, NB, SALIGN)
    if tl.program_id(0) == 0:  # a branch, not a mask: the other programs skip it
        _fixed_bytes(u8_ptr, hdr_ptr, base, codes_at, kv == 0, PAD_AT, PAD_N, HEADER)


@triton.jit
def _row_scale_zero(u8_ptr, i16_ptr, i32_ptr, unit, row_ok, SCALES_OFF, ZEROS_OFF, SYM: tl.constexpr,
                    SDT: tl.constexpr, NB: tl.constexpr, SALIGN: tl.constexpr):
    """Each row's scale and zero point (0 where symmetric), ``unit`` the rows' byte offsets of their units."""
    s = _sdt_value(_load_bits(u8_ptr, i16_ptr, i32_ptr, unit + SCALES_OFF, row_ok, NB, SALIGN), SDT)
    if SYM:
        z = s * 0.0
    else:
        z = _sdt_value(_load_bits(u8_ptr, i16_ptr, i32_ptr, unit + ZEROS_OFF, row_ok, NB, SALIGN), SDT)
    return s, z


@triton.jit
def group_decode_kernel(u8_ptr, i16_ptr, i32_ptr, out_ptr, rows_per_tensor,
                        LAYER_BYTES, CODES_OFF, CODES_STRIDE, SCALES_OFF, SCALES_STRIDE, ZEROS_OFF, LIMIT,
                        G: tl.constexpr, GP: tl.constexpr, BLOCK_R: tl.constexpr, KIND: tl.constexpr,
                        SYM: tl.constexpr, QMAX: tl.constexpr, SDT: tl.constexpr, NB: tl.constexpr,
                        SALIGN: tl.constexpr, WORDS: tl.constexpr, OUT: tl.constexpr):
    """Payload -> rows of ``G`` elements of ``out`` (bf16 written as int16 bit patterns)."""
    row_ok, rows64, kv, i, base = tensor_rows(rows_per_tensor, LAYER_BYTES, BLOCK_R)
    P: tl.constexpr = 2 if KIND == 1 else 1
    W: tl.constexpr = GP // (4 * P)
    ROW_BYTES: tl.constexpr = G // P
    w, j, k, col = _code_tile(W, P)
    s, z = _row_scale_zero(u8_ptr, i16_ptr, i32_ptr, base + kv * SCALES_STRIDE + i * NB, row_ok, SCALES_OFF,
                           ZEROS_OFF, SYM, SDT, NB, SALIGN)
    q = _load_codes(u8_ptr, i32_ptr, base + CODES_OFF + kv * CODES_STRIDE + i * ROW_BYTES, k, w, j, row_ok, P,
                    ROW_BYTES, WORDS)
    x = _dequant(q, s[:, None, None, None], z[:, None, None, None], QMAX, SYM, KIND)
    mask = row_ok[:, None, None, None] & (col < G)
    _out_store(out_ptr + rows64[:, None, None, None] * G + col, x, mask, OUT, LIMIT)


@triton.jit
def group_decode_flat_kernel(u8_ptr, i16_ptr, i32_ptr, out_ptr, rows_per_tensor,
                             LAYER_BYTES, CODES_OFF, CODES_STRIDE, SCALES_OFF, SCALES_STRIDE, ZEROS_OFF, LIMIT,
                             G: tl.constexpr, BLOCK_R: tl.constexpr, KIND: tl.constexpr, SYM: tl.constexpr,
                             QMAX: tl.constexpr, SDT: tl.constexpr, NB: tl.constexpr, SALIGN: tl.constexpr,
                             OUT: tl.constexpr):
    """``group_decode_kernel`` on flat [BLOCK_R, G] tiles (issue 30, as ``channel_decode_flat_kernel``):
    whole-word code rows spread to element order in registers, each row stored as one contiguous run.
    Needs G a power of two and whole-word rows (``WORDS``)."""
    row_ok, rows64, kv, i, base = tensor_rows(rows_per_tensor, LAYER_BYTES, BLOCK_R)
    P: tl.constexpr = 2 if KIND == 1 else 1
    ROW_BYTES: tl.constexpr = G // P
    s, z = _row_scale_zero(u8_ptr, i16_ptr, i32_ptr, base + kv * SCALES_STRIDE + i * NB, row_ok, SCALES_OFF,
                           ZEROS_OFF, SYM, SDT, NB, SALIGN)
    at = (base + CODES_OFF + kv * CODES_STRIDE + i * ROW_BYTES) // 4
    wi = tl.arange(0, ROW_BYTES // 4)
    word = tl.load(i32_ptr + at[:, None] + wi[None, :], mask=row_ok[:, None] & (wi < ROW_BYTES // 4)[None, :],
                   other=0)
    byte = bytes_of_words(word)
    if KIND == 1:
        q = tl.interleave(byte & 0xF, byte >> 4)
    else:
        q = byte
    x = _dequant(q, s[:, None], z[:, None], QMAX, SYM, KIND)
    col = tl.arange(0, G)
    _out_store(out_ptr + rows64[:, None] * G + col[None, :], x, row_ok[:, None] & (col < G)[None, :], OUT, LIMIT)


# ---- channel kernels: one scale per (head, channel) over the sequence ------------------------------

@triton.jit
def channel_reduce_kernel(x_ptr, part_ptr, seq, CHUNK, n_chunks,
                          D: tl.constexpr, DP: tl.constexpr, BLOCK_S: tl.constexpr, SYM: tl.constexpr):
    """Chunk ``pid0`` of the tokens of slab ``pid1`` = (layer, K/V, head) [seq, D] -> its per-channel
    max |x| (symmetric) or min and max (asymmetric), NaN where the chunk holds one, into
    ``part`` [slabs, n_chunks, 1 or 2, D] float32."""
    c = tl.program_id(0)
    th = tl.program_id(1).to(tl.int64)
    col = tl.arange(0, DP)
    cok = col < D
    r = tl.arange(0, BLOCK_S)
    slab = x_ptr + th * seq * D
    # element-wise running max / min over the tile's rows, reduced across rows once after the loop
    # (a reduction over rows every step would cross warps through shared memory every step)
    hi = tl.full([BLOCK_S, DP], float("-inf"), tl.float32)
    lo = tl.full([BLOCK_S, DP], float("inf"), tl.float32)
    nan = tl.zeros([BLOCK_S, DP], tl.int32)
    start = c * CHUNK
    end = tl.minimum(start + CHUNK, seq)
    for s0 in range(start, end, BLOCK_S):
        rows = s0 + r
        m = (rows < end)[:, None] & cok[None, :]
        x = tl.load(slab + rows[:, None] * D + col[None, :], mask=m, other=0.0).to(tl.float32)
        nan = nan | (x != x).to(tl.int32)
        if SYM:
            hi = tl.maximum(hi, tl.abs(x))  # masked lanes hold 0
        else:
            hi = tl.maximum(hi, tl.where(m, x, float("-inf")))
            lo = tl.minimum(lo, tl.where(m, x, float("inf")))
    hi = tl.max(hi, axis=0) + tl.where(tl.max(nan, axis=0) > 0, float("nan"), 0.0)
    NV: tl.constexpr = 1 if SYM else 2
    at = part_ptr + (th * n_chunks + c) * NV * D + col
    tl.store(at, hi, mask=cok)
    if not SYM:
        tl.store(at + D, tl.min(lo, axis=0), mask=cok)


@triton.jit
def channel_scale_kernel(part_ptr, aux_ptr, u8_ptr, i16_ptr, i32_ptr, hdr_ptr, n_chunks, heads,
                         LAYER_BYTES, CODES_OFF, CODES_STRIDE, SCALES_OFF, SCALES_STRIDE, ZEROS_OFF, PAD_AT, PAD_N,
                         D: tl.constexpr, DP: tl.constexpr, BLOCK_C: tl.constexpr, SYM: tl.constexpr,
                         QMAX: tl.constexpr, SDT: tl.constexpr, NB: tl.constexpr, SALIGN: tl.constexpr,
                         HEADER: tl.constexpr):
    """Slab ``pid0`` = (layer, K/V, head): combine its chunks' ranges into per-channel scales (and
    zero points), write them to the payload and ``1 / scale`` (and the zero point) to ``aux``
    [slabs, 1 or 2, D] float32 for ``channel_encode_kernel``; head 0 writes the section table / pad."""
    th = tl.program_id(0)
    t = th // heads
    h = th - t * heads
    kv = t % 2
    base = (t // 2).to(tl.int64) * LAYER_BYTES
    NV: tl.constexpr = 1 if SYM else 2
    col = tl.arange(0, DP)
    cok = col < D
    cc = tl.arange(0, BLOCK_C)
    hi = tl.full([BLOCK_C, DP], float("-inf"), tl.float32)
    lo = tl.full([BLOCK_C, DP], float("inf"), tl.float32)
    nan = tl.zeros([BLOCK_C, DP], tl.int32)
    for c0 in range(0, n_chunks, BLOCK_C):
        m = ((c0 + cc) < n_chunks)[:, None] & cok[None, :]
        at = part_ptr + ((th.to(tl.int64) * n_chunks + c0 + cc) * NV * D)[:, None] + col[None, :]
        p = tl.load(at, mask=m, other=float("-inf"))
        nan = nan | (p != p).to(tl.int32)
        hi = tl.maximum(hi, p)
        if not SYM:
            lo = tl.minimum(lo, tl.load(at + D, mask=m, other=float("inf")))
    hi = tl.max(hi, axis=0) + tl.where(tl.max(nan, axis=0) > 0, float("nan"), 0.0)
    lo = tl.min(lo, axis=0)
    unit = base + kv * SCALES_STRIDE + (h * D + col).to(tl.int64) * NB
    aux = aux_ptr + th.to(tl.int64) * NV * D + col
    if SYM:
        s, inv = _sym_scale(hi, QMAX, SDT)
    else:
        lof, s, inv = _asym_scale(lo, hi, QMAX, SDT)
        _store_bits(u8_ptr, i16_ptr, i32_ptr, unit + ZEROS_OFF, _sdt_bits(lof, SDT), cok, NB, SALIGN)
        tl.store(aux + D, lof, mask=cok)
    _store_bits(u8_ptr, i16_ptr, i32_ptr, unit + SCALES_OFF, _sdt_bits(s, SDT), cok, NB, SALIGN)
    tl.store(aux, inv, mask=cok)
    if h == 0:
        _fixed_bytes(u8_ptr, hdr_ptr, base, base + CODES_OFF + kv * CODES_STRIDE, kv == 0, PAD_AT, PAD_N, HEADER)


@triton.jit
def _slab_rows(seq, heads, LAYER_BYTES, BLOCK_S: tl.constexpr, REVERSE: tl.constexpr):
    """A program's tokens on the grid (token block, slab = (layer * 2 + K/V) * heads + head): (valid,
    token, slab as int64, K/V 0/1, head, layer's byte base). One division per program, none per row.
    ``REVERSE``: programs taken from the end of the cache first (see ``channel_encode_kernel``)."""
    th = tl.program_id(1)
    blk = tl.program_id(0)
    if REVERSE:
        th = tl.num_programs(1) - 1 - th
        blk = tl.num_programs(0) - 1 - blk
    t = th // heads
    s = blk * BLOCK_S + tl.arange(0, BLOCK_S)
    return s < seq, s, th.to(tl.int64), t % 2, th - t * heads, (t // 2).to(tl.int64) * LAYER_BYTES


@triton.jit
def channel_encode_kernel(x_ptr, aux_ptr, u8_ptr, i32_ptr, seq, heads, LAYER_BYTES, CODES_OFF, CODES_STRIDE,
                          D: tl.constexpr, DP: tl.constexpr, BLOCK_S: tl.constexpr, KIND: tl.constexpr,
                          SYM: tl.constexpr, QMAX: tl.constexpr, WORDS: tl.constexpr):
    """Tokens of one slab -> their codes, with the per-channel ``1 / scale`` (and zero point) from ``aux``.

    The grid runs backwards through the cache: ``channel_reduce_kernel`` read it forwards just
    before, so the L2 still holds its end, and this second read starts there."""
    ok, s, th, kv, h, base = _slab_rows(seq, heads, LAYER_BYTES, BLOCK_S, True)
    P: tl.constexpr = 2 if KIND == 1 else 1
    W: tl.constexpr = DP // (4 * P)
    ROW_BYTES: tl.constexpr = D // P
    NV: tl.constexpr = 1 if SYM else 2
    w, j, k, col = _code_tile(W, P)
    cok = col < D
    x = tl.load(x_ptr + (th * seq + s)[:, None, None, None] * D + col, mask=ok[:, None, None, None] & cok,
                other=0.0).to(tl.float32)
    aux = aux_ptr + th * NV * D + col
    inv = tl.load(aux, mask=cok, other=0.0)
    if SYM:
        c = _int_codes(x, 0.0, inv, QMAX, SYM, KIND)
    else:
        c = _int_codes(x, tl.load(aux + D, mask=cok, other=0.0), inv, QMAX, SYM, KIND)
    at = base + CODES_OFF + kv * CODES_STRIDE + (h * seq + s).to(tl.int64) * ROW_BYTES
    _store_codes(u8_ptr, i32_ptr, at, c, k, w, j, ok, ROW_BYTES, WORDS)


@triton.jit
def channel_fused_kernel(x_ptr, u8_ptr, i16_ptr, i32_ptr, hdr_ptr, seq, heads,
                         LAYER_BYTES, CODES_OFF, CODES_STRIDE, SCALES_OFF, SCALES_STRIDE, ZEROS_OFF, PAD_AT, PAD_N,
                         D: tl.constexpr, SP: tl.constexpr, CB: tl.constexpr, KIND: tl.constexpr,
                         SYM: tl.constexpr, QMAX: tl.constexpr, SDT: tl.constexpr, NB: tl.constexpr,
                         SALIGN: tl.constexpr, WORDS: tl.constexpr, HEADER: tl.constexpr):
    """The three channel launches in one, for caches of at most ``SP`` tokens (issue 30): program
    (channel block, slab = (layer * 2 + K/V) * heads + head) loads ALL ``seq`` tokens of ``CB`` channels
    ([SP, CB] in registers), reduces each channel's range over them, writes the channels' scales (and
    zero points), then quantizes the tile it still holds and writes its codes (``CB / P`` bytes of every
    row). The cache is read once, from DRAM, in one launch; the first program of each tensor writes the
    section table and the pad. Same arithmetic as the three-launch path, so the same bytes."""
    cb = tl.program_id(0)
    th = tl.program_id(1)
    t = th // heads
    h = th - t * heads
    kv = t % 2
    base = (t // 2).to(tl.int64) * LAYER_BYTES
    P: tl.constexpr = 2 if KIND == 1 else 1
    r = tl.arange(0, SP)
    col = cb * CB + tl.arange(0, CB)
    rok = r < seq
    ok = rok[:, None] & (col < D)[None, :]
    x = tl.load(x_ptr + (th.to(tl.int64) * seq + r)[:, None] * D + col[None, :], mask=ok, other=0.0).to(tl.float32)
    nan = tl.max((x != x).to(tl.int32), axis=0) > 0
    unit = base + kv * SCALES_STRIDE + (h * D + col).to(tl.int64) * NB
    if SYM:
        hi = tl.max(tl.abs(x), axis=0) + tl.where(nan, float("nan"), 0.0)  # masked rows hold 0
        sc, inv = _sym_scale(hi, QMAX, SDT)
        c = _int_codes(x, 0.0, inv[None, :], QMAX, SYM, KIND)
    else:
        lo = tl.min(tl.where(ok, x, float("inf")), axis=0)
        hi = tl.max(tl.where(ok, x, float("-inf")), axis=0) + tl.where(nan, float("nan"), 0.0)
        lof, sc, inv = _asym_scale(lo, hi, QMAX, SDT)
        c = _int_codes(x, lof[None, :], inv[None, :], QMAX, SYM, KIND)
        _store_bits(u8_ptr, i16_ptr, i32_ptr, unit + ZEROS_OFF, _sdt_bits(lof, SDT), col < D, NB, SALIGN)
    _store_bits(u8_ptr, i16_ptr, i32_ptr, unit + SCALES_OFF, _sdt_bits(sc, SDT), col < D, NB, SALIGN)
    ROW_BYTES: tl.constexpr = D // P
    NBYTES: tl.constexpr = CB // P  # this program's bytes of every row
    if KIND == 1:
        even, odd = tl.split(tl.reshape(c, [SP, CB // 2, 2]))
        byte = even | (odd << 4)
    else:
        byte = c
    codes_at = base + CODES_OFF + kv * CODES_STRIDE
    at = codes_at + (h * seq + r).to(tl.int64) * ROW_BYTES + cb * NBYTES  # [SP] byte offsets
    if WORDS:
        wi = tl.arange(0, NBYTES // 4)
        tl.store(i32_ptr + (at // 4)[:, None] + wi[None, :], words_of_bytes(byte, SP, NBYTES),
                 mask=rok[:, None] & (wi < NBYTES // 4)[None, :])
    else:
        bi = tl.arange(0, NBYTES)
        tl.store(u8_ptr + at[:, None] + bi[None, :], byte.to(tl.uint8), mask=rok[:, None] & (bi < NBYTES)[None, :])
    if cb == 0:
        if h == 0:
            _fixed_bytes(u8_ptr, hdr_ptr, base, codes_at, kv == 0, PAD_AT, PAD_N, HEADER)


@triton.jit
def channel_decode_kernel(u8_ptr, i16_ptr, i32_ptr, out_ptr, seq, heads,
                          LAYER_BYTES, CODES_OFF, CODES_STRIDE, SCALES_OFF, SCALES_STRIDE, ZEROS_OFF, LIMIT,
                          D: tl.constexpr, DP: tl.constexpr, BLOCK_S: tl.constexpr, KIND: tl.constexpr,
                          SYM: tl.constexpr, QMAX: tl.constexpr, SDT: tl.constexpr, NB: tl.constexpr,
                          SALIGN: tl.constexpr, WORDS: tl.constexpr, OUT: tl.constexpr):
    """Payload -> tokens of one slab: codes times the slab's per-channel scales (plus zero points)."""
    ok, s, th, kv, h, base = _slab_rows(seq, heads, LAYER_BYTES, BLOCK_S, False)
    P: tl.constexpr = 2 if KIND == 1 else 1
    W: tl.constexpr = DP // (4 * P)
    ROW_BYTES: tl.constexpr = D // P
    w, j, k, col = _code_tile(W, P)
    cok = col < D
    unit = base + kv * SCALES_STRIDE + (h * D + col).to(tl.int64) * NB
    sc = _sdt_value(_load_bits(u8_ptr, i16_ptr, i32_ptr, unit + SCALES_OFF, cok, NB, SALIGN), SDT)
    if SYM:
        z = sc * 0.0
    else:
        z = _sdt_value(_load_bits(u8_ptr, i16_ptr, i32_ptr, unit + ZEROS_OFF, cok, NB, SALIGN), SDT)
    at = base + CODES_OFF + kv * CODES_STRIDE + (h * seq + s).to(tl.int64) * ROW_BYTES
    q = _load_codes(u8_ptr, i32_ptr, at, k, w, j, ok, P, ROW_BYTES, WORDS)
    x = _dequant(q, sc, z, QMAX, SYM, KIND)
    _out_store(out_ptr + (th * seq + s)[:, None, None, None] * D + col, x, ok[:, None, None, None] & cok, OUT, LIMIT)
