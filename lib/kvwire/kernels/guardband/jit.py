"""The ``@triton.jit`` kernels of ``guardband``: key statistics, the layer prologue, encode and decode
(launched by ``kernel.py``, whose docstring describes the steps and why the bytes are exact)."""

from __future__ import annotations

import triton
import triton.language as tl

from ..bytepack import load_f16_bytes, pack_blocks, store_f16_bytes, unpack_blocks
from ..jit import bf16_bits


@triton.jit
def key_stats_kernel(x_ptr, part_ptr, norm_ptr, S, TOKENS_PER_PROGRAM,
                     H: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, BLOCK_S: tl.constexpr,
                     CHANNEL: tl.constexpr, NORMS: tl.constexpr):
    """Keys of (layer, head) = program_id(1), tokens of chunk program_id(0): the chunk's channel absmax
    into ``part_ptr`` [chunks, layers * heads, D] (``layer_prologue_kernel`` reduces the chunks: no
    atomics, no memset), and with ``NORMS`` every token's float64 L2 norm into ``norm_ptr``
    [layers * heads, S]."""
    lh = tl.program_id(1)
    layer = lh // H
    head = lh % H
    base = ((layer.to(tl.int64) * 2) * H + head) * S * D  # K is index 0 of the layer's K/V pair
    col = tl.arange(0, DP)
    cmask = col < D
    start = tl.program_id(0) * TOKENS_PER_PROGRAM
    end = tl.minimum(start + TOKENS_PER_PROGRAM, S)
    acc = tl.zeros([DP], dtype=tl.float32)
    for t0 in range(start, end, BLOCK_S):
        t = t0 + tl.arange(0, BLOCK_S)
        m = (t < end)[:, None] & cmask[None, :]
        x = tl.load(x_ptr + base + t.to(tl.int64)[:, None] * D + col[None, :], mask=m, other=0.0).to(tl.float32)
        if CHANNEL:
            acc = tl.maximum(acc, tl.max(tl.abs(x), axis=0))
        if NORMS:  # squares of <= 24-bit values are exact in float64: the sum is all but exact
            x64 = x.to(tl.float64)
            tl.store(norm_ptr + lh.to(tl.int64) * S + t, tl.sqrt(tl.sum(x64 * x64, axis=1)), mask=t < end)
    if CHANNEL:
        tl.store(part_ptr + (tl.program_id(0) * tl.num_programs(1) + lh).to(tl.int64) * D + col, acc, mask=cmask)


@triton.jit
def layer_prologue_kernel(out_ptr, head_ptr, head_at_ptr, part_ptr, chan_ptr, chan_at_ptr, N_PARTS, N_LH,
                          HB: tl.constexpr, HBP: tl.constexpr, H: tl.constexpr, D: tl.constexpr,
                          DP: tl.constexpr, CHANNEL: tl.constexpr):
    """(layer, head) = program_id(0, 1): the layer's section table + plan header bytes (head 0), and the
    head's key channel scales: the absmax over ``key_stats_kernel``'s chunks, 1 for an all-zero
    channel, rounded to float16 -> payload bytes, and as float32 into ``chan`` [layers, 2, heads, D]
    (V's row all ones, so the kernels divide values by 1.0)."""
    layer = tl.program_id(0)
    head = tl.program_id(1)
    j = tl.arange(0, HBP)
    hm = (j < HB) & ((j * 0 + head) == 0)
    tl.store(out_ptr + tl.load(head_at_ptr + layer) + j, tl.load(head_ptr + layer * HB + j, mask=hm, other=0),
             mask=hm)
    if CHANNEL:
        col = tl.arange(0, DP)
        cm = col < D
        lh = layer * H + head
        amax = tl.zeros([DP], dtype=tl.float32)
        for c in range(N_PARTS):
            amax = tl.maximum(amax, tl.load(part_ptr + (c * N_LH + lh).to(tl.int64) * D + col, mask=cm, other=0.0))
        s16 = tl.where(amax > 0, amax, 1.0).to(tl.float16)
        store_f16_bytes(out_ptr + tl.load(chan_at_ptr + layer), (head * D + col) * 2, s16, cm)
        tl.store(chan_ptr + ((layer * 2) * H + head) * D + col, s16.to(tl.float32), mask=cm)
        tl.store(chan_ptr + ((layer * 2 + 1) * H + head) * D + col, tl.full([DP], 1.0, tl.float32), mask=cm)


@triton.jit
def cpu_zero_key(e, G: tl.constexpr, V: tl.constexpr):
    """Which zero of a group torch's CPU ``amin``/``amax`` returns (lowest key wins), so a ``-0.0`` /
    ``+0.0`` tie gets the CPU's sign. Its inner reduction of ``G`` floats keeps 4 vectors of ``V``
    lanes (``vectorized_inner_reduction``): per lane a vector min/max that returns the later operand
    on a tie, the 4 vectors folded (0 v 1, 2 v 3, then the pairs: the later wins), lanes folded in
    order keeping the earlier, then a scalar loop over the ``G % 4V`` tail keeping the earlier.
    ``cpu_zero_lanes`` measures ``V`` on this host's torch."""
    C: tl.constexpr = G // (4 * V)
    MAIN: tl.constexpr = C * 4 * V
    i = e // (4 * V)
    j = (e // V) % 4
    lane = e % V
    return tl.where(e < MAIN, lane * (4 * C) + (3 - j) * C + (C - 1 - i), 4 * V * C + (e - MAIN))


@triton.jit
def _job(jobs_ptr, H: tl.constexpr, D: tl.constexpr, G: tl.constexpr, BLOCK_G: tl.constexpr, BITS: tl.constexpr):
    """This program's segment (``program_id(2)``) and rows. Per-program bases are int64 scalars, per-row
    offsets int32 (a (K/V, head) block of a layer holds < 2**31 elements), so the address arithmetic
    stays cheap. Returns (layer, K/V, head, group rows [BLOCK_G] in the (K/V, head) block, valid, token,
    group within the token, token mapping (split, shift, base), gather row, element base of the
    (K/V, head) block in the cache, byte bases of its codes / scales / zero points)."""
    jp = jobs_ptr + tl.program_id(2) * 12
    layer = tl.load(jp + 0)
    n = tl.load(jp + 1).to(tl.int32)
    split = tl.load(jp + 2).to(tl.int32)
    shift = tl.load(jp + 3).to(tl.int32)
    base = tl.load(jp + 4).to(tl.int32)
    gather = tl.load(jp + 5)
    x_base = tl.multiple_of(tl.load(jp + 9), 16)  # 2 * heads * tokens * head_dim * layers: a multiple of 16
    x_tokens = tl.load(jp + 10)
    GPR: tl.constexpr = D // G
    kvh = tl.program_id(1)
    gr = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    ok = gr < n * GPR
    tok = gr // GPR
    grp = gr % GPR
    x_block = tl.multiple_of(x_base + kvh.to(tl.int64) * x_tokens * D, 8)
    g_block = kvh.to(tl.int64) * n * GPR  # the block's first group in the segment
    codes_at = tl.load(jp + 6) + g_block * (G * BITS // 8)
    scales_at = tl.load(jp + 7) + g_block * 2
    zeros_at = tl.load(jp + 8) + g_block * 2
    return (layer, kvh // H, kvh % H, gr, ok, tok, grp, split, shift, base, gather, x_block,
            codes_at, scales_at, zeros_at)


@triton.jit
def encode_kernel(x_ptr, out_ptr, chan_ptr, idx_ptr, jobs_ptr, flag_ptr, IDX_STRIDE,
                  H: tl.constexpr, D: tl.constexpr, G: tl.constexpr, BITS: tl.constexpr, NB: tl.constexpr,
                  BLOCK_G: tl.constexpr, KEY_SCALE: tl.constexpr, CHECK: tl.constexpr, ZLANES: tl.constexpr):
    """Quantize ``BLOCK_G`` groups of one (K/V, head) of segment ``program_id(2)`` into the payload."""
    layer, kv, head, gr, ok, tok, grp, split, shift, base, gather, x_block, codes_at, scales_at, zeros_at = _job(
        jobs_ptr, H, D, G, BLOCK_G, BITS)
    QMAX: tl.constexpr = (1 << BITS) - 1
    W: tl.constexpr = G // 8
    src = tok + tl.where(tok >= split, shift, 0) + base
    if gather >= 0:  # a dropped body: its kept tokens' positions, ascending
        src = tl.load(idx_ptr + gather * IDX_STRIDE + tok, mask=ok, other=0)
    row = tl.multiple_of(src * D + grp * G, 8)  # element offset of the group in the (K/V, head) block
    w = tl.arange(0, W)
    k = tl.arange(0, 8)
    e = w[None, :, None] * 8 + k[None, None, :]  # [1, W, 8]: a group as W blocks of 8 codes
    m3 = tl.broadcast_to(ok[:, None, None], (BLOCK_G, W, 8))  # (constant along a group: vector loads)
    x = tl.load(x_ptr + x_block + (row[:, None, None] + e), mask=m3, other=0.0).to(tl.float32)
    if KEY_SCALE:  # keys / channel scale; values / 1.0 (exact): ``chan`` is [layers, 2, heads, D], V's ones
        c = tl.load(chan_ptr + ((layer * 2 + kv) * H + head) * D + ((grp * G)[:, None, None] + e), mask=m3, other=1.0)
        x = tl.math.div_rn(x, c)
    hi = tl.max(tl.max(x, axis=2), axis=1)
    lo = tl.min(tl.min(x, axis=2), axis=1)
    if tl.max(((lo == 0.0) | (hi == 0.0)).to(tl.int32), axis=0) > 0:
        # a zero extreme: its sign is that of the zero torch's CPU reduction picks (``cpu_zero_key``)
        zk = tl.where(x == 0.0, cpu_zero_key(e, G, ZLANES), 1 << 20)
        wk = tl.min(tl.min(zk, axis=2), axis=1)
        neg = tl.max(tl.max(((zk == wk[:, None, None]) & (x.to(tl.int32, bitcast=True) < 0)).to(tl.int32),
                            axis=2), axis=1)
        signed_zero = (neg << 31).to(tl.float32, bitcast=True)
        lo = tl.where(lo == 0.0, signed_zero, lo)
        hi = tl.where(hi == 0.0, signed_zero, hi)
    zero16 = lo.to(tl.float16)
    zf = zero16.to(tl.float32)
    scale16 = tl.math.div_rn(hi - zf, QMAX * 1.0).to(tl.float16)
    s = scale16.to(tl.float32)
    inv = tl.where(s > 0, tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), s), 0.0)
    t = zf + s * -0.5  # the half step folded into the zero point, as the CPU codec does
    y = (x - t[:, None, None]) * inv[:, None, None]
    code = tl.minimum(tl.maximum(y, 0.0), QMAX * 1.0).to(tl.int32)  # truncation = floor here
    if BITS == 8:
        tl.store(out_ptr + codes_at + (gr[:, None, None] * G + e), code.to(tl.uint8), mask=m3)
    else:
        byte = pack_blocks(code, BITS, NB)
        mm = tl.arange(0, NB)
        at = gr[:, None, None] * (G * BITS // 8) + w[None, :, None] * BITS + mm[None, None, :]
        tl.store(out_ptr + codes_at + at, byte.to(tl.uint8), mask=ok[:, None, None] & (mm[None, None, :] < BITS))
    store_f16_bytes(out_ptr + scales_at, gr * 2, scale16, ok)
    store_f16_bytes(out_ptr + zeros_at, gr * 2, zero16, ok)
    if CHECK:  # a scale or zero point past float16 (the CPU codec's CodecError)
        bad = ok & ((zf != zf) | (tl.abs(zf) == float("inf")) | (s != s) | (s == float("inf")))
        tl.atomic_add(flag_ptr, tl.sum(bad.to(tl.int32), axis=0))


@triton.jit
def decode_kernel(in_ptr, y_ptr, chan_ptr, jobs_ptr, flag_ptr, LIMIT,
                  H: tl.constexpr, D: tl.constexpr, G: tl.constexpr, BITS: tl.constexpr, NB: tl.constexpr,
                  BLOCK_G: tl.constexpr, KEY_SCALE: tl.constexpr, CLAMP_FIRST: tl.constexpr,
                  OUT_KIND: tl.constexpr, CHECK: tl.constexpr):
    """Dequantize ``BLOCK_G`` groups of one (K/V, head) of segment ``program_id(2)`` into ``y``
    (float32, float16, or bfloat16 written as int16 bit patterns)."""
    layer, kv, head, gr, ok, tok, grp, split, shift, base, _, y_block, codes_at, scales_at, zeros_at = _job(
        jobs_ptr, H, D, G, BLOCK_G, BITS)
    W: tl.constexpr = G // 8
    dst_tok = tok + tl.where(tok >= split, shift, 0) + base
    row = tl.multiple_of(dst_tok * D + grp * G, 8)
    w = tl.arange(0, W)
    k = tl.arange(0, 8)
    e = w[None, :, None] * 8 + k[None, None, :]
    m3 = tl.broadcast_to(ok[:, None, None], (BLOCK_G, W, 8))  # (constant along a group: vector loads)
    if BITS == 8:
        code = tl.load(in_ptr + codes_at + (gr[:, None, None] * G + e), mask=m3, other=0).to(tl.int32)
    else:
        mm = tl.arange(0, NB)
        at = gr[:, None, None] * (G * BITS // 8) + w[None, :, None] * BITS + mm[None, None, :]
        byte = tl.load(in_ptr + codes_at + at, mask=ok[:, None, None] & (mm[None, None, :] < BITS), other=0)
        code = unpack_blocks(byte.to(tl.int32), BITS)
    s = load_f16_bytes(in_ptr + scales_at, gr * 2, ok)
    z = load_f16_bytes(in_ptr + zeros_at, gr * 2, ok)
    x = code.to(tl.float32) * s[:, None, None] + z[:, None, None]  # the product is exact
    if CLAMP_FIRST:
        x = tl.minimum(tl.maximum(x, -LIMIT), LIMIT)
    if KEY_SCALE:
        c = tl.load(chan_ptr + ((layer * 2 + kv) * H + head) * D + ((grp * G)[:, None, None] + e), mask=m3, other=1.0)
        x = tl.minimum(tl.maximum(x * c, -LIMIT), LIMIT)  # V: x * 1.0, and the CPU's first clamp covers it
    dst = y_ptr + y_block + (row[:, None, None] + e)
    if OUT_KIND == 2:
        tl.store(dst, bf16_bits(x).to(tl.int16), mask=m3)
    elif OUT_KIND == 1:
        tl.store(dst, x.to(tl.float16), mask=m3)
    else:
        tl.store(dst, x, mask=m3)
    if CHECK:  # the CPU codec's "non-finite scale or zero point"
        bad = ok & ((s != s) | (tl.abs(s) == float("inf")) | (z != z) | (tl.abs(z) == float("inf")))
        tl.atomic_add(flag_ptr, tl.sum(bad.to(tl.int32), axis=0))
