"""The ``@triton.jit`` functions of token selection: the CPU's float32 summation orders, the scoring
kernels, the keep mask and positions, the gather and the decode (launched by ``kernel.py``, whose
docstring describes the steps and why the kept tokens are the CPU's)."""

from __future__ import annotations

import triton
import triton.language as tl


# ---- Triton: the CPU's float32 summation orders --------------------------------------------

@triton.jit
def _row(ptr, r, stride, cols, ok, C, POOL: tl.constexpr, K: tl.constexpr, PAD: tl.constexpr):
    """Row ``r`` (row stride ``stride``) of a float32 matrix at ``cols``; with POOL 1/2 the row
    average/max pooled over ``K`` columns (stride 1, padding PAD, ``C`` columns), as the CPU does."""
    base = ptr + r * stride
    if POOL == 0:
        v = tl.load(base + cols, mask=ok, other=0.0)
    elif POOL == 1:
        v = tl.zeros(cols.shape, tl.float32)
        for q in tl.static_range(K):  # running sum from the left, out-of-range columns skipped (+0)
            c = cols - PAD + q
            v += tl.load(base + c, mask=ok & (c >= 0) & (c < C), other=0.0)
        v = tl.math.div_rn(v, K * 1.0)
    else:
        v = tl.full(cols.shape, float("-inf"), tl.float32)
        for q in tl.static_range(K):
            c = cols - PAD + q
            v = tl.maximum(v, tl.load(base + c, mask=ok & (c >= 0) & (c < C), other=float("-inf")))
    return v


@triton.jit
def _cascade_sum(ptr, stride, cols, ok, C, R: tl.constexpr, POOL: tl.constexpr, K: tl.constexpr,
                 PAD: tl.constexpr):
    """Sum of rows 0..R-1 in ATen's ``multi_row_sum`` order (R < 256): running sums of 16 rows added
    into a second accumulator, the remaining rows' running sum added to it last."""
    a1 = tl.zeros(cols.shape, tl.float32)
    for c in tl.static_range(R // 16):
        s = tl.zeros(cols.shape, tl.float32)
        for j in tl.static_range(16):
            s += _row(ptr, c * 16 + j, stride, cols, ok, C, POOL, K, PAD)
        a1 += s
    t = tl.zeros(cols.shape, tl.float32)
    for j in tl.static_range((R // 16) * 16, R):
        t += _row(ptr, j, stride, cols, ok, C, POOL, K, PAD)
    return t + a1


@triton.jit
def _ilp_sum(ptr, stride, cols, ok, C, R: tl.constexpr, POOL: tl.constexpr, K: tl.constexpr,
             PAD: tl.constexpr):
    """Sum of rows 0..R-1 in ATen's ``row_sum`` order: four interleaved cascades (rows 4i + k),
    the leftover rows added to the first, then the four added left to right."""
    SI: tl.constexpr = R // 4
    p0 = _cascade_sum(ptr, stride * 4, cols, ok, C, SI, POOL, K, PAD)
    p1 = _cascade_sum(ptr + stride, stride * 4, cols, ok, C, SI, POOL, K, PAD)
    p2 = _cascade_sum(ptr + 2 * stride, stride * 4, cols, ok, C, SI, POOL, K, PAD)
    p3 = _cascade_sum(ptr + 3 * stride, stride * 4, cols, ok, C, SI, POOL, K, PAD)
    for j in tl.static_range(SI * 4, R):
        p0 += _row(ptr, j, stride, cols, ok, C, POOL, K, PAD)
    return ((p0 + p1) + p2) + p3


@triton.jit
def _cpu_sum(ptr, stride, cols, ok, C, F, R: tl.constexpr, POOL: tl.constexpr, K: tl.constexpr,
             PAD: tl.constexpr):
    """torch's CPU ``x.sum(dim=0)`` of R rows, column by column: cascade below column F, ILP above."""
    out = _cascade_sum(ptr, stride, cols, ok, C, R, POOL, K, PAD)
    if tl.max(cols, axis=0) >= F:  # only the last column block of a row pays for the second order
        out = tl.where(cols < F, out, _ilp_sum(ptr, stride, cols, ok, C, R, POOL, K, PAD))
    return out


@triton.jit
def _votes_kernel(obs_ptr, votes_ptr, layer_stride, head_stride, row_stride, P, F, H,
                  W: tl.constexpr, BLOCK: tl.constexpr):
    """SnapKV votes ``obs[l, h, :W, :P].sum(rows)`` (obs: the window's rows) -> votes [layers * H, P]."""
    lh = tl.program_id(1)
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < P
    base = obs_ptr + (lh // H).to(tl.int64) * layer_stride + (lh % H).to(tl.int64) * head_stride
    v = _cpu_sum(base, row_stride, cols, ok, P, F, W, 0, 1, 0)
    tl.store(votes_ptr + lh.to(tl.int64) * P + cols, v, mask=ok)


@triton.jit
def _key_norms_kernel(kv_ptr, norms_ptr, S, H, D: tl.constexpr, BLOCK: tl.constexpr, LANES: tl.constexpr):
    """L2 norm of every key row ([layers, 2, H, S, D] cache) in ATen's CPU order -> norms [layers * H, S]."""
    lh = tl.program_id(1)
    t = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = t < S
    row = ((lh // H) * 2 * H + lh % H).to(tl.int64) * S + t  # K of layer lh // H, head lh % H
    lanes = tl.arange(0, LANES)
    acc = tl.zeros([BLOCK, LANES], tl.float32)
    for c in tl.static_range(D // LANES):
        x = tl.load(kv_ptr + row[:, None] * D + c * LANES + lanes[None, :], mask=ok[:, None], other=0.0)
        x = x.to(tl.float32)
        acc += x * x
    # lanes added left to right: one lane = a masked sum of one value and zeros (exact)
    b = tl.sum(tl.where(lanes[None, :] == 0, acc, 0.0), axis=1)
    for j in tl.static_range(1, LANES):
        b += tl.sum(tl.where(lanes[None, :] == j, acc, 0.0), axis=1)
    for c in tl.static_range((D // LANES) * LANES, D):
        x = tl.load(kv_ptr + row * D + c, mask=ok, other=0.0).to(tl.float32)
        b += x * x
    tl.store(norms_ptr + lh.to(tl.int64) * S + t, tl.sqrt_rn(b), mask=ok)


@triton.jit
def _scores_kernel(src_ptr, scores_ptr, meta_ptr, layer_stride, head_stride, S, C, F,
                   H: tl.constexpr, POOL: tl.constexpr, K: tl.constexpr, PAD: tl.constexpr,
                   NEGATE: tl.constexpr, META: tl.constexpr, BLOCK: tl.constexpr):
    """Scores [layers, S]: the CPU-order sum over the H heads of ``src`` [layers, H, C] (pooled with
    POOL), negated with NEGATE, 0 for tokens past C (SnapKV's window), -inf for forced tokens."""
    lay = tl.program_id(1)
    t = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = t < C
    v = _cpu_sum(src_ptr + lay.to(tl.int64) * layer_stride, head_stride, t, ok, C, F, H, POOL, K, PAD)
    if NEGATE:
        v = -v
    v = tl.where(ok, v, 0.0)
    first = tl.load(meta_ptr + lay * META + 1)
    last = tl.load(meta_ptr + lay * META + 2)
    v = tl.where((t < first) | (t >= S - last), float("-inf"), v)
    tl.store(scores_ptr + lay.to(tl.int64) * S + t, v, mask=t < S)


# ---- Triton: keep mask, positions, gather, decode ----------------------------------------------

@triton.jit
def _kept(t, lay, S, first, last, free, vstar, istar, scores_ptr, HAS_SCORES: tl.constexpr):
    """Whether token ``t`` of layer ``lay`` is kept: forced, or within the first ``free`` of the
    stable descending order (score > v*, or == v* and not after i*)."""
    inside = t < S
    keep = inside & ((t < first) | (t >= S - last))
    if HAS_SCORES:
        s = tl.load(scores_ptr + lay.to(tl.int64) * S + t, mask=inside, other=float("-inf"))
        chosen = (s > vstar) | ((s == vstar) & (t <= istar))
        keep = keep | (inside & (free > 0) & chosen)
    return keep


@triton.jit
def _compact_kernel(scores_ptr, vals_ptr, idx_ptr, meta_ptr, hdr_ptr, out_ptr, pos_ptr, count_ptr, S, MB,
                    HAS_SCORES: tl.constexpr, META: tl.constexpr, HDR_BYTES: tl.constexpr, BB: tl.constexpr):
    """One program per layer: its section table and bit-packed keep mask into the payload, its kept
    positions (ascending) into ``pos`` [layers, S], their count into ``count``."""
    lay = tl.program_id(0)
    first = tl.load(meta_ptr + lay * META + 1)
    last = tl.load(meta_ptr + lay * META + 2)
    free = tl.load(meta_ptr + lay * META + 3)
    base = tl.load(meta_ptr + lay * META + 4)  # the layer's byte offset in the payload
    vstar = float("inf")
    istar = -1
    if HAS_SCORES:
        at = lay.to(tl.int64) * S + tl.maximum(free - 1, 0)
        vstar = tl.where(free > 0, tl.load(vals_ptr + at), float("inf"))
        istar = tl.where(free > 0, tl.load(idx_ptr + at), -1)
    h = tl.arange(0, 32)
    tl.store(out_ptr + base + h, tl.load(hdr_ptr + lay * HDR_BYTES + h, mask=h < HDR_BYTES), mask=h < HDR_BYTES)
    bit = tl.arange(0, 8)
    carry = 0
    for b0 in range(0, MB, BB):
        byte_i = b0 + tl.arange(0, BB)
        keep2 = _kept(byte_i[:, None] * 8 + bit[None, :], lay, S, first, last, free, vstar, istar, scores_ptr,
                      HAS_SCORES)
        byte = tl.sum(keep2.to(tl.int32) << bit[None, :], axis=1)  # token 8b + j at bit j
        tl.store(out_ptr + base + HDR_BYTES + byte_i, byte.to(tl.uint8), mask=byte_i < MB)
        t = b0 * 8 + tl.arange(0, BB * 8)
        keep = _kept(t, lay, S, first, last, free, vstar, istar, scores_ptr, HAS_SCORES).to(tl.int32)
        dst = carry + tl.cumsum(keep, axis=0) - 1
        tl.store(pos_ptr + lay.to(tl.int64) * S + dst, t, mask=(keep != 0) & (dst < S))
        carry += tl.sum(keep, axis=0)
    tl.store(count_ptr + lay, carry)


@triton.jit
def _gather_kernel(kv_ptr, out_ptr, pos_ptr, meta_ptr, S, H, WPR: tl.constexpr, WP2: tl.constexpr,
                   BLOCK_R: tl.constexpr, META: tl.constexpr):
    """Kept rows of the cache (words of ``WPR`` per row) -> the payload's K and V sections, on the grid
    (kept-row block, (layer * 2 + K/V) * H + head)."""
    t = tl.program_id(1)
    lay = t // (2 * H)
    kv = (t // H) % 2
    head = t % H
    n = tl.load(meta_ptr + lay * META + 0)
    j0 = tl.program_id(0) * BLOCK_R
    if j0 < n:
        j = j0 + tl.arange(0, BLOCK_R)
        ok = j < n
        p = tl.load(pos_ptr + lay.to(tl.int64) * S + j, mask=ok, other=0).to(tl.int64)
        w = tl.arange(0, WP2)
        m = ok[:, None] & (w[None, :] < WPR)
        x = tl.load(kv_ptr + (t.to(tl.int64) * S + p)[:, None] * WPR + w[None, :], mask=m)
        dst = tl.load(meta_ptr + lay * META + 5) + (kv * H + head).to(tl.int64) * n * WPR + j.to(tl.int64) * WPR
        tl.store(out_ptr + dst[:, None] + w[None, :], x, mask=m)


@triton.jit
def _unpack_kernel(pay_ptr, meta_ptr, pos_ptr, count_ptr, pad_ptr, S, MB,
                   META: tl.constexpr, HDR_BYTES: tl.constexpr, BT: tl.constexpr):
    """One program per layer: its keep mask -> kept positions (int64, ascending) at the layer's
    offset in ``pos``; popcount and set padding bits into ``count`` / ``pad`` (checked on the host)."""
    lay = tl.program_id(0)
    n = tl.load(meta_ptr + lay * META + 0)
    base = tl.load(meta_ptr + lay * META + 4) + HDR_BYTES
    pos0 = tl.load(meta_ptr + lay * META + 7)
    carry = 0
    pad = 0
    for t0 in range(0, MB * 8, BT):
        t = t0 + tl.arange(0, BT)
        byte = tl.load(pay_ptr + base + t // 8, mask=t < MB * 8, other=0).to(tl.int32)
        bit = (byte >> (t % 8)) & 1
        pad += tl.sum(tl.where(t >= S, bit, 0), axis=0)
        keep = tl.where(t < S, bit, 0)
        dst = carry + tl.cumsum(keep, axis=0) - 1
        tl.store(pos_ptr + pos0 + dst, t.to(tl.int64), mask=(keep != 0) & (dst < n))
        carry += tl.sum(keep, axis=0)
    tl.store(count_ptr + lay, carry)
    tl.store(pad_ptr + lay, pad)


@triton.jit
def _copy_kernel(src_ptr, dst_ptr, meta_ptr, WORDS_PER_TOKEN, META: tl.constexpr, BLOCK: tl.constexpr):
    """Every layer's K and V sections (one run of words) -> its slot of the decode buffer."""
    lay = tl.program_id(1)
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    words = tl.load(meta_ptr + lay * META + 0) * WORDS_PER_TOKEN
    ok = i < words
    x = tl.load(src_ptr + tl.load(meta_ptr + lay * META + 5) + i, mask=ok)
    tl.store(dst_ptr + tl.load(meta_ptr + lay * META + 6) + i, x, mask=ok)
