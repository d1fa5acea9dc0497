"""The ``@triton.jit`` kernels of ``cachegen``: anchor ranges, delta ranges, delta codes, the packed
streams of ``entropy="none"`` and the decode (launched by ``kernel.py``, whose docstring describes
the steps and why the bytes are exact)."""

from __future__ import annotations

import triton
import triton.language as tl

from ..bytepack import code_at, load_f16_bytes, pack_blocks_rt, store_f16_bytes
from ..jit import bf16_bits, rint


@triton.jit
def _decoded_anchor(xa, s, z, inv, QA: tl.constexpr):
    """The anchor's code and its decoded value, as ``quant.quantize`` / ``dequantize`` (asymmetric)."""
    code = tl.minimum(tl.maximum(rint((xa - z) * inv), 0.0), QA * 1.0)
    return code, code * s + z


@triton.jit
def anchor_range_kernel(x_ptr, a_scale_ptr, a_zero_ptr, out_ptr, sec_ptr, S, NC,
                        H: tl.constexpr, C: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
                        BLOCK_C: tl.constexpr, QA: tl.constexpr, PAYLOAD: tl.constexpr):
    """Tensor-head ``program_id(0)`` = (layer * 2 + K/V) * H + head: min/max of its anchors (the first
    token of every chunk) per channel -> float16 zero point and scale (and, with ``PAYLOAD``, their
    bytes at the layer's section offsets ``sec_ptr`` [layers, 10])."""
    t = tl.program_id(0)
    base = t.to(tl.int64) * S * D
    col = tl.arange(0, DP)
    cm = col < D
    lo = tl.full([DP], float("inf"), tl.float32)
    hi = tl.full([DP], float("-inf"), tl.float32)
    for c0 in range(0, NC, BLOCK_C):
        ch = c0 + tl.arange(0, BLOCK_C)
        m = (ch < NC)[:, None] & cm[None, :]
        x = tl.load(x_ptr + base + (ch.to(tl.int64) * C)[:, None] * D + col[None, :], mask=m, other=0.0).to(tl.float32)
        lo = tl.minimum(lo, tl.min(tl.where(m, x, float("inf")), axis=0))
        hi = tl.maximum(hi, tl.max(tl.where(m, x, float("-inf")), axis=0))
    lof = lo.to(tl.float16).to(tl.float32) + 0.0  # -0.0 -> +0.0, as codecs/quant.py
    zero16 = lof.to(tl.float16)
    scale16 = (tl.math.div_rn(hi - lof, QA * 1.0).to(tl.float16).to(tl.float32) + 0.0).to(tl.float16)
    tl.store(a_scale_ptr + t * D + col, scale16, mask=cm)
    tl.store(a_zero_ptr + t * D + col, zero16, mask=cm)
    if PAYLOAD:
        layer = t // (2 * H)
        kv = (t // H) % 2
        head = t % H
        sec = sec_ptr + layer * 10 + kv * 5
        store_f16_bytes(out_ptr, tl.load(sec + 0) + (head * D + col) * 2, scale16, cm)
        store_f16_bytes(out_ptr, tl.load(sec + 1) + (head * D + col) * 2, zero16, cm)


@triton.jit
def delta_range_kernel(x_ptr, a_scale_ptr, a_zero_ptr, a_codes_ptr, amax_ptr, out_ptr, sec_ptr,
                       S, NC, CHUNKS_PER_PROGRAM, T0,
                       H: tl.constexpr, C: tl.constexpr, CP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
                       BLOCK_C: tl.constexpr, QA: tl.constexpr, PAYLOAD: tl.constexpr):
    """Chunks [program_id(0) * CHUNKS_PER_PROGRAM, ...) of tensor-head ``T0 + program_id(1)``: the anchor
    codes (uint8 into ``a_codes`` [tensor-heads, NC, D], and with ``PAYLOAD`` -- 8-bit anchors -- into
    the anchor stream too) and every channel's |x - decoded anchor| max over the chunks' other tokens
    (float32 bits, ``atomic_max`` into ``amax`` [tensor-heads, D])."""
    t = T0 + tl.program_id(1)
    base = t.to(tl.int64) * S * D
    col = tl.arange(0, DP)
    cm = col < D
    s = tl.load(a_scale_ptr + t * D + col, mask=cm, other=0.0).to(tl.float32)
    z = tl.load(a_zero_ptr + t * D + col, mask=cm, other=0.0).to(tl.float32)
    inv = tl.where(s > 0, tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), s), 0.0)
    w = tl.arange(0, CP)  # a chunk's tokens, padded to a power of two
    acc = tl.zeros([DP], dtype=tl.float32)
    start = tl.program_id(0) * CHUNKS_PER_PROGRAM
    end = tl.minimum(start + CHUNKS_PER_PROGRAM, NC)
    for c0 in range(start, end, BLOCK_C):
        ch = c0 + tl.arange(0, BLOCK_C)
        cok = ch < end
        am = cok[:, None] & cm[None, :]
        xa = tl.load(x_ptr + base + (ch.to(tl.int64) * C)[:, None] * D + col[None, :], mask=am, other=0.0).to(tl.float32)
        code, a_hat = _decoded_anchor(xa, s[None, :], z[None, :], inv[None, :], QA)
        tl.store(a_codes_ptr + (t.to(tl.int64) * NC + ch)[:, None] * D + col[None, :], code.to(tl.uint8), mask=am)
        if PAYLOAD:  # the stream holds [heads, chunks, D] codes of this (layer, K/V), after its mode byte
            at = tl.load(sec_ptr + (t // (2 * H)) * 10 + ((t // H) % 2) * 5 + 2) + 1
            tl.store(out_ptr + at + ((t % H) * NC + ch).to(tl.int64)[:, None] * D + col[None, :], code.to(tl.uint8),
                     mask=am)
        tok = ch[:, None] * C + w[None, :]  # [BLOCK_C, C]
        m = (cok[:, None] & (w[None, :] > 0) & (w[None, :] < C) & (tok < S))[:, :, None] & cm[None, None, :]
        x = tl.load(x_ptr + base + tok.to(tl.int64)[:, :, None] * D + col[None, None, :], mask=m, other=0.0)
        delta = tl.where(m, tl.abs(x.to(tl.float32) - a_hat[:, None, :]), 0.0)
        acc = tl.maximum(acc, tl.max(tl.max(delta, axis=1), axis=0))
    tl.atomic_max(amax_ptr + t * D + col, acc.to(tl.int32, bitcast=True), mask=cm)


@triton.jit
def _delta_bits(t, H: tl.constexpr, C1, C2, B0, B1, B2):
    """Delta bits of tensor-head ``t``'s layer: ``layer_tier``'s thirds (``bits_early/mid/late``), given as
    the first layers of the stack in the middle (``C1``) and the last (``C2``) third (``_tier_cuts``)."""
    layer = t // (2 * H)
    tier = (layer >= C1).to(tl.int32) + (layer >= C2).to(tl.int32)
    return tl.where(tier == 0, B0, tl.where(tier == 1, B1, B2))


@triton.jit
def delta_codes_kernel(x_ptr, a_scale_ptr, a_zero_ptr, amax_ptr, codes_ptr, d_scale_ptr, out_ptr, sec_ptr,
                       S, ND, T0, C1, C2, B0, B1, B2,
                       H: tl.constexpr, C: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, TPB: tl.constexpr,
                       QA: tl.constexpr, PAYLOAD: tl.constexpr):
    """Delta positions [program_id(0) * 8 TPB, ...) of tensor-head ``T0 + program_id(1)``, every channel:
    codes of (x - decoded anchor) / delta scale, symmetric, channel-major, at the layer's bit width.
    Without ``PAYLOAD`` into ``codes`` [tensor-heads, D, ND] (uint8); with it (``ND % 8 == 0``: 8
    positions = one block of a row), bit-packed straight into the delta stream. The delta scales go
    to ``d_scale`` (and the payload) from the first position block's programs."""
    t = T0 + tl.program_id(1)
    base = t.to(tl.int64) * S * D
    bits = _delta_bits(t, H, C1, C2, B0, B1, B2)
    qf = ((1 << (bits - 1)) - 1).to(tl.float32)
    col = tl.arange(0, DP)
    cm = col < D
    amax = tl.load(amax_ptr + t * D + col, mask=cm, other=0).to(tl.float32, bitcast=True)
    ds16 = tl.math.div_rn(amax, tl.full(amax.shape, 1.0, tl.float32) * qf).to(tl.float16)
    ds = ds16.to(tl.float32)
    dinv = tl.where(ds > 0, tl.math.div_rn(tl.full(ds.shape, 1.0, tl.float32), ds), 0.0)
    layer = t // (2 * H)
    kv = (t // H) % 2
    head = t % H
    sec = sec_ptr + layer * 10 + kv * 5
    first = (col * 0 + tl.program_id(0)) == 0  # (a tensor: a bool scalar & tensor is int32 in the interpreter)
    tl.store(d_scale_ptr + t * D + col, ds16, mask=cm & first)
    if PAYLOAD:
        store_f16_bytes(out_ptr, tl.load(sec + 3) + (head * D + col) * 2, ds16, cm & first)
    s = tl.load(a_scale_ptr + t * D + col, mask=cm, other=0.0).to(tl.float32)[:, None, None]
    z = tl.load(a_zero_ptr + t * D + col, mask=cm, other=0.0).to(tl.float32)[:, None, None]
    inv = tl.where(s > 0, tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), s), 0.0)
    blk = tl.arange(0, TPB)
    k = tl.arange(0, 8)
    p = tl.program_id(0) * (TPB * 8) + blk[None, :, None] * 8 + k[None, None, :]  # [1, TPB, 8]
    chunk = p // (C - 1)
    tok = chunk * C + 1 + p % (C - 1)
    m = cm[:, None, None] & (p < ND)
    x = tl.load(x_ptr + base + tok.to(tl.int64) * D + col[:, None, None], mask=m, other=0.0).to(tl.float32)
    xa = tl.load(x_ptr + base + (chunk * C).to(tl.int64) * D + col[:, None, None], mask=m, other=0.0).to(tl.float32)
    _, a_hat = _decoded_anchor(xa, s, z, inv, QA)
    code = (tl.minimum(tl.maximum(rint((x - a_hat) * dinv[:, None, None]), -qf), qf) + qf).to(tl.int32)
    row = (head * D + col).to(tl.int64)[:, None, None]  # the (head, channel) row of this (layer, K/V)'s stream
    if PAYLOAD:
        at = tl.load(sec + 4) + 1  # after the stream's mode byte
        byte = pack_blocks_rt(code, bits)  # [DP, TPB, 8]: one 8-position block per inner row
        pb = (tl.program_id(0) * TPB + blk)[None, :, None]
        bat = at + (row * (ND // 8) + pb) * bits + k[None, None, :]
        tl.store(out_ptr + bat, byte.to(tl.uint8), mask=cm[:, None, None] & (pb * 8 < ND) & (k[None, None, :] < bits))
    else:
        tl.store(codes_ptr + (t.to(tl.int64) * D + col)[:, None, None] * ND + p, code.to(tl.uint8), mask=m)


@triton.jit
def pack_stream_kernel(src_ptr, dst_ptr, streams_ptr, BLOCKS: tl.constexpr):
    """Bit-pack uint8 codes: stream ``program_id(1)`` (src offset, dst offset, n codes, bits in
    ``streams_ptr``) blocks [program_id(0) * BLOCKS, ...) -> ``bitpack.pack``'s bytes."""
    sp = streams_ptr + tl.program_id(1) * 4
    src = tl.load(sp)
    dst = tl.load(sp + 1)
    n = tl.load(sp + 2)
    bits = tl.load(sp + 3).to(tl.int32)
    b = tl.program_id(0) * BLOCKS + tl.arange(0, BLOCKS)
    k = tl.arange(0, 8)
    i = b[:, None] * 8 + k[None, :]
    code = tl.load(src_ptr + src + i, mask=i < n, other=0).to(tl.int32)
    byte = pack_blocks_rt(code[:, None, :], bits)  # [BLOCKS, 1, 8]
    nblocks = (n + 7) // 8
    tl.store(dst_ptr + dst + b[:, None, None] * bits + k[None, None, :], byte.to(tl.uint8),
             mask=(b < nblocks)[:, None, None] & (k[None, None, :] < bits))


@triton.jit
def decode_kernel(a_src_ptr, d_src_ptr, a_scale_ptr, a_zero_ptr, d_scale_ptr, y_ptr, sec_ptr, flag_ptr,
                  S, NC, ND, T0, C1, C2, B0, B1, B2, LIMIT,
                  H: tl.constexpr, C: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, BLOCK_T: tl.constexpr,
                  AB: tl.constexpr, PACKED: tl.constexpr, OUT_KIND: tl.constexpr, CHECK: tl.constexpr):
    """Tokens [program_id(0) * BLOCK_T, ...) of tensor-head ``T0 + program_id(1)``: decoded anchor, plus
    the dequantized delta for the chunk's other tokens. Codes come from the symbol tensors or, with
    ``PACKED``, straight from the payload's bit-packed streams (offsets in ``sec_ptr``)."""
    t = T0 + tl.program_id(1)
    bits = _delta_bits(t, H, C1, C2, B0, B1, B2)
    q = (1 << (bits - 1)) - 1
    col = tl.arange(0, DP)
    cm = col < D
    tok = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    m = (tok < S)[:, None] & cm[None, :]
    chunk = tok // C
    within = tok % C
    head = t % H
    p = chunk * (C - 1) + within - 1
    dm = m & (within > 0)[:, None]
    if PACKED:  # scales straight from the payload's sections (any byte alignment)
        layer = t // (2 * H)
        kv = (t // H) % 2
        sec = sec_ptr + layer * 10 + kv * 5
        at = (head * D + col) * 2
        s = load_f16_bytes(a_src_ptr + tl.load(sec + 0), at, cm)[None, :]
        z = load_f16_bytes(a_src_ptr + tl.load(sec + 1), at, cm)[None, :]
        ds = load_f16_bytes(a_src_ptr + tl.load(sec + 3), at, cm & ((col * 0 + ND) > 0))[None, :]  # none w/o deltas
        a_i = ((head * NC + chunk).to(tl.int64) * D)[:, None] + col[None, :]
        acode = code_at(a_src_ptr, tl.load(sec + 2) + 1, a_i, AB, m)
        d_i = (head * D + col).to(tl.int64)[None, :] * ND + p[:, None]
        dcode = code_at(d_src_ptr, tl.load(sec + 4) + 1, d_i, bits, dm)
    else:
        s = tl.load(a_scale_ptr + t * D + col, mask=cm, other=0.0).to(tl.float32)[None, :]
        z = tl.load(a_zero_ptr + t * D + col, mask=cm, other=0.0).to(tl.float32)[None, :]
        ds = tl.load(d_scale_ptr + t * D + col, mask=cm, other=0.0).to(tl.float32)[None, :]
        acode = tl.load(a_src_ptr + (t.to(tl.int64) * NC + chunk)[:, None] * D + col[None, :], mask=m, other=0)
        acode = acode.to(tl.int32)
        dcode = tl.load(d_src_ptr + (t.to(tl.int64) * D + col)[None, :] * ND + p[:, None], mask=dm, other=0)
        dcode = dcode.to(tl.int32)
    a_hat = acode.to(tl.float32) * s + z
    x = tl.where(within[:, None] > 0, a_hat + (dcode - q).to(tl.float32) * ds, a_hat)
    if CHECK:  # the CPU codec's "delta code out of range" and "payload decodes to NaN/Inf"
        bad = (dm & (dcode > 2 * q)) | (m & ((x != x) | (tl.abs(x) == float("inf"))))
        tl.atomic_add(flag_ptr, tl.sum(tl.sum(bad.to(tl.int32), axis=1), axis=0))
    x = tl.minimum(tl.maximum(x, -LIMIT), LIMIT)
    dst = y_ptr + (t.to(tl.int64) * S + tok)[:, None] * D + col[None, :]
    if OUT_KIND == 2:
        tl.store(dst, bf16_bits(x).to(tl.int16), mask=m)
    elif OUT_KIND == 1:
        tl.store(dst, x.to(tl.float16), mask=m)
    else:
        tl.store(dst, x, mask=m)
