"""Triton kernels of the KVQuant GPU codec's outlier selection (step 2 of ``jit.py``'s
encode): the exact top-k of every tensor's z-scores as a radix select on the unique 62-bit key
``(score bits, 2**31 - 1 - flat index)``, so ties at the k-th score go to the LOWEST indices.

``select_first_kernel`` picks the window bin (``jit._window``) of the k-th score from the
first pass's histogram; ``collect_kernel`` counts each tile's sure outliers, compacts that bin's
members into a candidate buffer (overflow flagged) and folds the keys' sure inliers into their
channels' min/max; six ``level_kernel`` / ``select_level_kernel`` rounds (11 + 10 + 10 bits of
score, then of index) narrow the bin on the buffer -- or on the cache itself where the buffer
overflowed -- until the k-th key is known or its bucket is wholly selected; ``finish_kernel``
settles the bin's members (outlier counts per quantize tile, the inliers' channel min/max).
The per-tensor state: ``STATE`` int32 (window bin, need, key hi, key lo, done, overflow,
candidates). Every kernel here covers all layers' K and V in one launch.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .jit import (_flat_rank, _hist, _key_scores, _layer_head, _ordered, _selected, _spread, _tensor_scores,
                          _tile, _value_scores, _window, _zero_key)

# the host's view of the selection's scratch (the kernels spell these numbers out: Triton globals
# must be constexpr); the window's 256 bins start at (score bits >> 20) == 888, i.e. 2**-16
LEVELS = 6  # radix rounds after the window: score bits 30..20, 19..10, 9..0, then index bits
LEVEL_BINS = (2048, 1024, 1024, 2048, 1024, 1024)
HIST_STRIDE = 2048  # int32 per (tensor, round) histogram
STATE = 8  # int32 per tensor: window bin, need, key hi, key lo, done, overflow, candidates, unused


@triton.jit
def _top_bin(hist, need):
    """(bin b holding the need-th largest element counting from the top bin, its count, the
    count of the bins above it)."""
    bins = tl.arange(0, hist.shape[0])
    total = tl.sum(hist, axis=0)
    suffix = total - tl.cumsum(hist, axis=0) + hist  # elements in bins >= b
    b = tl.max(tl.where(suffix >= need, bins, -1), axis=0)
    in_b = tl.sum(tl.where(bins == b, hist, 0), axis=0)
    at_b = tl.sum(tl.where(bins == b, suffix, 0), axis=0)
    return b, in_b, at_b - in_b

@triton.jit
def select_first_kernel(hist_ptr, st_ptr, COUNT):
    """Per tensor: the window bin of the COUNT-th largest z-score; the selection state."""
    t = tl.program_id(0)
    hist = tl.load(hist_ptr + t * 256 + tl.arange(0, 256))
    b, in_b, above = _top_bin(hist, COUNT)
    need = COUNT - above
    base = st_ptr + t * 8
    tl.store(base + 0, b)
    tl.store(base + 1, need)
    tl.store(base + 2, 0)
    tl.store(base + 3, 0)
    tl.store(base + 4, (in_b == need).to(tl.int32))  # the whole bin is selected
    tl.store(base + 5, 0)
    tl.store(base + 6, 0)

@triton.jit
def _channel_extremes(lo_ptr, hi_ptr, zk_ptr, at0, x, inlier, s, col, D: tl.constexpr, W: tl.constexpr):
    """Fold a [rows, W, 8] key tile's inliers into the per-channel min/max (order-preserving int32
    atomics) and zero keys (the max, or for the columns outside the 32-column blocks the min, of
    ``_zero_key``), so the CPU's choice of zero sign can be made afterwards."""
    lo = tl.min(tl.where(inlier, x, float("inf")), axis=0)  # [W, 8] per channel
    hi = tl.max(tl.where(inlier, x, float("-inf")), axis=0)
    c2 = tl.reshape(col, [W, 8])
    cm = c2 < D
    tl.atomic_min(lo_ptr + at0 + c2, _ordered(lo), mask=cm)
    tl.atomic_max(hi_ptr + at0 + c2, _ordered(hi), mask=cm)
    zero = inlier & (x == 0)
    zk = _zero_key(s[:, None, None] + col * 0, x)
    last = tl.max(tl.where(zero, zk, -1), axis=0)
    first = tl.min(tl.where(zero, zk, 0x7FFFFFFF), axis=0)
    vec_col = c2 < 32 * (D // 32)
    tl.atomic_max(zk_ptr + at0 + c2, last, mask=cm & vec_col & (last >= 0))
    tl.atomic_min(zk_ptr + at0 + c2, first, mask=cm & (vec_col == 0) & (first < 0x7FFFFFFF))

@triton.jit
def collect_kernel(src_ptr, mean_ptr, inv_ptr, st_ptr, buf_ptr, cnt_ptr, lo_ptr, hi_ptr, zk_ptr, CAP, S, H, NRB, NTM,
                   D: tl.constexpr, W: tl.constexpr, BLOCK_R: tl.constexpr, IS_KEY: tl.constexpr,
                   PRE: tl.constexpr, HAS_OUT: tl.constexpr):
    """Per tile of K or V: the count of sure outliers (window bin above the k-th score's), the
    members of the k-th score's bin compacted into the candidate buffer (overflow flagged), and for
    K the per-channel min/max of the sure inliers (integer atomics on order-preserving bits)."""
    rb = tl.program_id(0)
    th = tl.program_id(1)
    layer, h = _layer_head(th, H)
    t = 2 * layer + (0 if IS_KEY else 1)
    s, col, valid, idx = _tile(rb, h, S, D, BLOCK_R, W)
    if IS_KEY:
        if PRE:
            base = th.to(tl.int64) * S * D
        else:
            base = ((layer * 2) * H + h).to(tl.int64) * S * D
        if HAS_OUT:
            x, bits = _key_scores(src_ptr, base, s, col, valid, mean_ptr, inv_ptr, th * D, D)
        else:
            x = tl.load(src_ptr + base + s[:, None, None].to(tl.int64) * D + col, mask=valid,
                        other=0.0).to(tl.float32)
            bits = tl.zeros(x.shape, tl.int32)
    else:
        base = ((layer * 2 + 1) * H + h).to(tl.int64) * S * D
        x, bits = _value_scores(src_ptr, base, s, col, valid, mean_ptr, inv_ptr, th * S, S, D)
    inlier = valid
    if HAS_OUT:
        b1 = tl.load(st_ptr + t * 8)
        w = _window(bits)
        sure = valid & (w > b1)
        cand = valid & (w == b1)
        inlier = valid & (w < b1)
        tl.store(cnt_ptr + t * NTM + h * NRB + rb, tl.sum(tl.sum(tl.sum(sure.to(tl.int32), axis=2), axis=1), axis=0))
        rank, n_cand = _flat_rank(cand)
        first = tl.atomic_add(st_ptr + t * 8 + 6, n_cand)
        pos = first + rank
        keep = cand & (pos < CAP)
        slot = (t.to(tl.int64) * CAP + pos) * 2
        tl.store(buf_ptr + slot, bits, mask=keep)
        tl.store(buf_ptr + slot + 1, idx, mask=keep)
        tl.store(st_ptr + t * 8 + 5, 1, mask=first + n_cand > CAP)
    if IS_KEY:
        _channel_extremes(lo_ptr, hi_ptr, zk_ptr, th * D, x, inlier, s, col, D, W)

@triton.jit
def _level_digit(bits, idx, k_hi, k_lo, LEVEL: tl.constexpr):
    """(whether the key matches the prefix known before LEVEL, its LEVEL digit)."""
    lo = 0x7FFFFFFF - idx
    if LEVEL == 0:
        return bits == bits, (bits >> 20) & 2047
    elif LEVEL == 1:
        return (bits >> 20) == (k_hi >> 20), (bits >> 10) & 1023
    elif LEVEL == 2:
        return (bits >> 10) == (k_hi >> 10), bits & 1023
    elif LEVEL == 3:
        return bits == k_hi, (lo >> 20) & 2047
    elif LEVEL == 4:
        return (bits == k_hi) & ((lo >> 20) == (k_lo >> 20)), (lo >> 10) & 1023
    else:
        return (bits == k_hi) & ((lo >> 10) == (k_lo >> 10)), lo & 1023

@triton.jit
def level_kernel(buf_ptr, st_ptr, hist_ptr, CAP, x_ptr, kr_ptr, kmean_ptr, kinv_ptr, vmean_ptr, vinv_ptr, S, H, NRB,
                 D: tl.constexpr, W: tl.constexpr, BLOCK_R: tl.constexpr, PRE: tl.constexpr,
                 LEVEL: tl.constexpr, NB: tl.constexpr, BLOCK_E: tl.constexpr, NPROG: tl.constexpr):
    """One radix round of the selection: the histogram of digit LEVEL over the members of the
    current bucket -- from the candidate buffer, or (the buffer overflowed) from the cache."""
    j = tl.program_id(0)
    t = tl.program_id(1)
    st = st_ptr + t * 8
    b1 = tl.load(st)
    k_hi = tl.load(st + 2)
    k_lo = tl.load(st + 3)
    active = tl.load(st + 4) == 0
    over = tl.load(st + 5) != 0
    acc = tl.zeros([NB], tl.int32)
    n_buf = tl.where(active & (over == 0), tl.minimum(tl.load(st + 6), CAP), 0)
    for start in range(j * BLOCK_E, n_buf, NPROG * BLOCK_E):
        e = start + tl.arange(0, BLOCK_E)
        m = e < n_buf
        slot = (t.to(tl.int64) * CAP + e) * 2
        bits = tl.load(buf_ptr + slot, mask=m, other=0)
        idx = tl.load(buf_ptr + slot + 1, mask=m, other=0)
        match, digit = _level_digit(bits, idx, k_hi, k_lo, LEVEL)
        acc += _hist(digit, m & match, NB)
    layer = t // 2
    kv = t % 2
    n_tiles = tl.where(active & over, H * NRB, 0)
    for tile in range(j, n_tiles, NPROG):
        h = tile // NRB
        x, bits, idx, valid, col = _tensor_scores(kv, layer, h, tile - h * NRB, x_ptr, kr_ptr, kmean_ptr, kinv_ptr,
                                                  vmean_ptr, vinv_ptr, S, H, D, BLOCK_R, W, PRE)
        match, digit = _level_digit(bits, idx, k_hi, k_lo, LEVEL)
        m = valid & match & (_window(bits) == b1)
        acc += _hist(tl.reshape(digit, [BLOCK_R * W * 8]), tl.reshape(m, [BLOCK_R * W * 8]), NB)
    tl.atomic_add(hist_ptr + (t * 6 + LEVEL) * 2048 + tl.arange(0, NB), acc, mask=acc > 0)

@triton.jit
def select_level_kernel(hist_ptr, st_ptr, LEVEL: tl.constexpr, NB: tl.constexpr):
    """Per tensor: the digit of the k-th key at LEVEL; done when its bucket is wholly selected."""
    t = tl.program_id(0)
    st = st_ptr + t * 8
    active = tl.load(st + 4) == 0
    hist = tl.load(hist_ptr + (t * 6 + LEVEL) * 2048 + tl.arange(0, NB))
    need = tl.load(st + 1)
    b, in_b, above = _top_bin(hist, need)
    need = need - above
    if LEVEL == 0:
        tl.store(st + 2, b << 20, mask=active)
    elif LEVEL == 1:
        tl.store(st + 2, tl.load(st + 2) | (b << 10), mask=active)
    elif LEVEL == 2:
        tl.store(st + 2, tl.load(st + 2) | b, mask=active)
    elif LEVEL == 3:
        tl.store(st + 3, b << 20, mask=active)
    elif LEVEL == 4:
        tl.store(st + 3, tl.load(st + 3) | (b << 10), mask=active)
    else:
        tl.store(st + 3, tl.load(st + 3) | b, mask=active)
    tl.store(st + 1, need, mask=active)
    tl.store(st + 4, ((in_b == need) | (LEVEL == 5)).to(tl.int32), mask=active)

@triton.jit
def _tile_of(idx, kv, S, D, NRB_K, NRB_V, BLOCK_RK: tl.constexpr, BLOCK_RV: tl.constexpr):
    """The quantize tile (``cnt`` slot) of flat index ``idx`` of K (kv 0, taller tiles) or V."""
    row = idx // D
    h = row // S
    s = row - h * S
    return tl.where(kv == 0, h * NRB_K + s // BLOCK_RK, h * NRB_V + s // BLOCK_RV), row, h

@triton.jit
def finish_kernel(buf_ptr, st_ptr, cnt_ptr, lo_ptr, hi_ptr, zk_ptr, CAP, x_ptr, kr_ptr, kmean_ptr, kinv_ptr, vmean_ptr,
                  vinv_ptr, S, H, NRB, NRB_K, NTM, D: tl.constexpr, W: tl.constexpr, BLOCK_R: tl.constexpr,
                  BLOCK_RK: tl.constexpr, PRE: tl.constexpr, BLOCK_E: tl.constexpr, NPROG: tl.constexpr):
    """The k-th score's bin, settled: each member's outlier count goes to its quantize tile, and a
    key that stays an inlier into its channel's min/max (from the buffer, or from the cache if the
    buffer overflowed; V's tiles are BLOCK_R rows, K's BLOCK_RK)."""
    j = tl.program_id(0)
    t = tl.program_id(1)
    st = st_ptr + t * 8
    b1 = tl.load(st)
    k_hi = tl.load(st + 2)
    k_lo = tl.load(st + 3)
    over = tl.load(st + 5) != 0
    layer = t // 2
    kv = t % 2
    n_buf = tl.where(over, 0, tl.minimum(tl.load(st + 6), CAP))
    if PRE:
        key_src = kr_ptr
        key_base = layer.to(tl.int64) * H * S * D
    else:
        key_src = x_ptr
        key_base = (layer * 2).to(tl.int64) * H * S * D
    for start in range(j * BLOCK_E, n_buf, NPROG * BLOCK_E):
        e = start + tl.arange(0, BLOCK_E)
        m = e < n_buf
        slot = (t.to(tl.int64) * CAP + e) * 2
        bits = tl.load(buf_ptr + slot, mask=m, other=0)
        idx = tl.load(buf_ptr + slot + 1, mask=m, other=0)
        sel = _selected(bits, idx, b1, k_hi, k_lo)
        tile, row, h = _tile_of(idx, kv, S, D, NRB_K, NRB, BLOCK_RK, BLOCK_R)
        tl.atomic_add(cnt_ptr + t * NTM + tile, tl.zeros_like(idx) + 1, mask=m & sel)
        keep = m & (sel == 0) & _spread(kv == 0, m)
        xv = tl.load(key_src + key_base + idx, mask=keep, other=0.0).to(tl.float32)
        c = idx - row * D
        at = layer * H * D + h * D + c
        tl.atomic_min(lo_ptr + at, _ordered(xv), mask=keep)
        tl.atomic_max(hi_ptr + at, _ordered(xv), mask=keep)
        zk = _zero_key(row - h * S, xv)
        zero = keep & (xv == 0)
        vec_col = c < 32 * (D // 32)
        tl.atomic_max(zk_ptr + at, zk, mask=zero & vec_col)
        tl.atomic_min(zk_ptr + at, zk, mask=zero & (vec_col == 0))
    n_tiles = tl.where(over, H * NRB, 0)
    for tile in range(j, n_tiles, NPROG):  # overflow: every member of the bin, from the cache (V's tiling)
        h = tile // NRB
        x, bits, idx, valid, col = _tensor_scores(kv, layer, h, tile - h * NRB, x_ptr, kr_ptr, kmean_ptr, kinv_ptr,
                                                  vmean_ptr, vinv_ptr, S, H, D, BLOCK_R, W, PRE)
        member = valid & (_window(bits) == b1)
        sel = member & _selected(bits, idx, b1, k_hi, k_lo)
        slot, _, _ = _tile_of(idx, kv, S, D, NRB_K, NRB, BLOCK_RK, BLOCK_R)
        tl.atomic_add(cnt_ptr + t * NTM + slot, tl.zeros_like(idx) + 1, mask=sel)
        inl = member & (sel == 0) & _spread(kv == 0, member)
        s = (tile - h * NRB) * BLOCK_R + tl.arange(0, BLOCK_R)
        _channel_extremes(lo_ptr, hi_ptr, zk_ptr, (layer * H + h) * D, x, inl, s, col, D, W)
