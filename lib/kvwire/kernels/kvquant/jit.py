"""Triton kernels of the KVQuant GPU codec (``kernel.py`` launches them in this order).

Encode, per cache (every layer's K and V in each launch):

1. ``key_partials_kernel`` / ``key_fold_kernel`` (twice: sums, then squared deviations) and
   ``value_moments_kernel``: each quantization vector's mean and 1/var in torch's CPU float32 sum
   order, so every z-score ``(x - mean)**2 / var`` is the CPU codec's, bit for bit (see below).
   With ``pre_rope`` the first key pass also un-rotates the keys into a float32 buffer.
2. The exact top-k of the z-scores per tensor (ties at the k-th score to the LOWEST indices),
   a radix select whose first pass is the 256-bin window histogram (``_window``) of
   ``value_moments_kernel`` / ``key_hist_kernel``: ``select.py``.
3. ``quant_kernel``: each tile recomputes its z-scores, marks its outliers (``_selected``),
   normalizes with the fp16-rounded offset/range, takes the nearest NF level (ties to the lower
   level, as the CPU's lookup), packs the codes as ``codecs/bitpack.py`` does and writes its
   outliers (flat int32 index and exact value) at its place in the sorted lists (an exclusive
   scan of the per-tile counts, done with torch).

Decode: ``dequant_kernel`` (codes -> levels -> ``fma(level, range, offset)`` -> clamp, and for
pre-RoPE keys the rotation with the partner column) then ``outlier_kernel`` (exact outliers
scattered; for pre-RoPE keys both outputs of the rotated pair recomputed).

Why the sums are bit-exact: ``torch.mean`` on the CPU is ``sum / n`` with ATen's cascade sum
(``aten/src/ATen/native/cpu/SumKernel.cpp``; the sum kernel is dispatched at AVX2 width, 8
floats, also on AVX512 hosts). Keys reduce over tokens with the columns vectorized: a column
``c < 32 * (D // 32)`` is summed by ``multi_row_sum`` -- chunks of ``STEP`` (16) rows added in
order from 0, chunk sums folded per level-1 group of ``STEP`` chunks, those per level-2 group,
those into the top accumulator, and ``((tail + acc1) + acc2) + acc3`` -- the other columns by
``row_sum``: four such cascades over the rows ``4i + k``, the leftover rows added to the first,
then the four added in order. Values reduce over head_dim (contiguous): 8-lane vectors, four
interleaved accumulators over the vectors, leftover vectors into the first, the four added, then
the 8 lanes added in order from 0. The kernels add in exactly these orders (``tl.static_range``
and explicit folds, never ``tl.sum``); ``tests/test_kernels_kvquant.py`` checks the means and
variances against torch's, bit for bit. The same reductions' ``amin``/``amax`` decide which
signed zero an all-zero vector's offset gets (``_zero_priority``, ``_zero_key``). Divisions are
``div_rn``, decode's ``addcmul`` is the CPU's fused multiply-add (``tl.fma``), and the kernels
are compiled without FMA contraction (``enable_fp_fusion=False``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..jit import bf16_bits



# ---- small helpers -------------------------------------------------------------------------------

@triton.jit
def _window(bits):
    """The histogram bin of a score's bit pattern: its top 11 bits (8 of exponent, 3 of mantissa)
    over scores 2**-16 .. 2**16 (1/8-octave bins); smaller scores lump into bin 0, larger into 255."""
    return tl.minimum(tl.maximum((bits >> 20) - 888, 0), 255)


@triton.jit
def _selected(bits, idx, b1, k_hi, k_lo):
    """An element is an outlier when its window bin is above the k-th score's, or in that bin with
    a key ``(bits, 2**31 - 1 - idx)`` at least the k-th key ``(k_hi, k_lo)``."""
    lo = 0x7FFFFFFF - idx
    w = _window(bits)
    return (w > b1) | ((w == b1) & ((bits > k_hi) | ((bits == k_hi) & (lo >= k_lo))))


@triton.jit
def _ordered(x):
    """float32 -> int32 with the same order (for integer atomic min/max)."""
    b = x.to(tl.int32, bitcast=True)
    return b ^ ((b >> 31) & 0x7FFFFFFF)


@triton.jit
def _unordered(o):
    b = o ^ ((o >> 31) & 0x7FFFFFFF)
    return b.to(tl.float32, bitcast=True)


@triton.jit
def _round_to(v, DT: tl.constexpr):
    """float32 -> (the value rounded to dtype DT (0 fp16, 1 bf16, 2 fp32) as float32, its bit
    pattern as int32), round to nearest even as torch's casts."""
    if DT == 0:
        h = v.to(tl.float16)
        return h.to(tl.float32), h.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    elif DT == 1:
        b = bf16_bits(v)
        return (b << 16).to(tl.float32, bitcast=True), b & 0xFFFF
    else:
        return v, v.to(tl.int32, bitcast=True)


@triton.jit
def _from_bits(b, DT: tl.constexpr):
    """The inverse of ``_round_to``'s bit pattern: int32 bits of dtype DT -> float32."""
    if DT == 0:
        return b.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    elif DT == 1:
        return (b << 16).to(tl.float32, bitcast=True)
    else:
        return b.to(tl.float32, bitcast=True)


@triton.jit
def _signed_zero(neg):
    """+0.0, or -0.0 where ``neg`` is 1."""
    return (neg << 31).to(tl.float32, bitcast=True)


@triton.jit
def _zero_key(s, x):
    """Token ``s`` and the sign of a zero entry: the CPU's amin/amax over tokens return the sign of
    the LAST zero (a column in 32-column vector blocks) or the FIRST (the other columns)."""
    return s * 2 + ((x.to(tl.int32, bitcast=True) >> 31) & 1)


@triton.jit
def _zero_priority(col, D: tl.constexpr):
    """Which zero of a row the CPU's amin/amax over head_dim return (the highest priority wins): in
    the vectorized part (4 accumulators of 8 lanes over 32-column chunks) the lowest lane, then
    the last accumulator, then the last chunk; the leftover columns lose to it, the first of them
    first (a vector min/max keeps its second operand on ties, the scalar one its first)."""
    NCH: tl.constexpr = D // 32
    vec = 4096 + ((7 - col % 8) * 4 + (col // 8) % 4) * NCH + col // 32
    return tl.where(col < 32 * NCH, vec, D - col)


@triton.jit
def _store_bytes(ptr, at, value, NBYTES: tl.constexpr, mask):
    """Little-endian bytes of int32 ``value`` at byte offsets ``at`` (sections need not be aligned)."""
    for m in tl.static_range(NBYTES):
        tl.store(ptr + at + m, ((value >> (8 * m)) & 0xFF).to(tl.uint8), mask=mask)


@triton.jit
def _load_bytes(ptr, at, NBYTES: tl.constexpr, mask):
    v = tl.load(ptr + at, mask=mask, other=0).to(tl.int32)
    for m in tl.static_range(1, NBYTES):
        v = v | (tl.load(ptr + at + m, mask=mask, other=0).to(tl.int32) << (8 * m))
    return v


@triton.jit
def _hist(values, valid, NB: tl.constexpr):
    """Histogram of ``values`` (1-D, in [0, NB)) over the ``valid`` lanes (masked lanes counted in
    bin 0 and taken out again: ``tl.histogram``'s mask argument is newer than Triton 3.6)."""
    h = tl.histogram(tl.where(valid, values, 0), NB)
    n_masked = tl.sum((valid == 0).to(tl.int32), axis=0)
    return h - tl.where(tl.arange(0, NB) == 0, n_masked, 0)


@triton.jit
def _spread(cond, like):
    """A scalar condition as a mask shaped like ``like`` (the interpreter mis-types ``mask & scalar``)."""
    return (tl.zeros(like.shape, tl.int32) + cond.to(tl.int32)) != 0


@triton.jit
def _layer_head(th, H):
    layer = th // H
    return layer, th - layer * H


@triton.jit
def _tile(rb, h, S, D, BLOCK_R: tl.constexpr, W: tl.constexpr):
    """A tile of rows ``rb * BLOCK_R ...`` of head ``h``, as [BLOCK_R, W, 8] (column ``8w + k``):
    (tokens [BLOCK_R], columns [1, W, 8], valid mask, flat index in [heads, seq, head_dim])."""
    s = rb * BLOCK_R + tl.arange(0, BLOCK_R)
    col = (tl.arange(0, W)[:, None] * 8 + tl.arange(0, 8)[None, :])[None, :, :]
    valid = (s < S)[:, None, None] & (col < D)
    idx = (h * S + s)[:, None, None] * D + col
    return s, col, valid, idx


@triton.jit
def _flat_rank(mask):
    """Exclusive rank of each set lane of a [R, W, 8] mask in row-major (flat index) order, and the count."""
    m = mask.to(tl.int32)
    in_group = tl.cumsum(m, axis=2) - m
    group = tl.sum(m, axis=2)
    in_row = tl.cumsum(group, axis=1) - group
    row = tl.sum(group, axis=1)
    before = tl.cumsum(row, axis=0) - row
    return before[:, None, None] + in_row[:, :, None] + in_group, tl.sum(row, axis=0)


@triton.jit
def _key_scores(src_ptr, base, s, col, valid, mean_ptr, inv_ptr, vec0, D):
    """Keys of one head (per-channel vectors): the tile as float32 and its z-score bit patterns."""
    x = tl.load(src_ptr + base + s[:, None, None].to(tl.int64) * D + col, mask=valid, other=0.0).to(tl.float32)
    mu = tl.load(mean_ptr + vec0 + col, mask=col < D, other=0.0)
    iv = tl.load(inv_ptr + vec0 + col, mask=col < D, other=0.0)
    dev = x - mu
    sq = dev * dev
    return x, (sq * iv).to(tl.int32, bitcast=True)


@triton.jit
def _value_scores(src_ptr, base, s, col, valid, mean_ptr, inv_ptr, vec0, S, D):
    """Values of one head (per-token vectors): the tile as float32 and its z-score bit patterns."""
    x = tl.load(src_ptr + base + s[:, None, None].to(tl.int64) * D + col, mask=valid, other=0.0).to(tl.float32)
    ok = s < S
    mu = tl.load(mean_ptr + vec0 + s, mask=ok, other=0.0)[:, None, None]
    iv = tl.load(inv_ptr + vec0 + s, mask=ok, other=0.0)[:, None, None]
    dev = x - mu
    sq = dev * dev
    return x, (sq * iv).to(tl.int32, bitcast=True)


@triton.jit
def _tensor_scores(kv, layer, h, rb, x_ptr, kr_ptr, kmean_ptr, kinv_ptr, vmean_ptr, vinv_ptr, S, H, D,
                   BLOCK_R: tl.constexpr, W: tl.constexpr, PRE: tl.constexpr):
    """A tile of K (kv 0) or V (kv 1) of one layer with its z-scores (kernels over both tensors)."""
    s, col, valid, idx = _tile(rb, h, S, D, BLOCK_R, W)
    if kv == 0:
        if PRE:
            x, bits = _key_scores(kr_ptr, (layer * H + h).to(tl.int64) * S * D, s, col, valid, kmean_ptr, kinv_ptr,
                                  (layer * H + h) * D, D)
        else:
            x, bits = _key_scores(x_ptr, ((layer * 2) * H + h).to(tl.int64) * S * D, s, col, valid, kmean_ptr,
                                  kinv_ptr, (layer * H + h) * D, D)
    else:
        x, bits = _value_scores(x_ptr, ((layer * 2 + 1) * H + h).to(tl.int64) * S * D, s, col, valid, vmean_ptr,
                                vinv_ptr, (layer * H + h) * S, S, D)
    return x, bits, idx, valid, col


# ---- 1. moments ----------------------------------------------------------------------------------

@triton.jit
def _key_row(x_ptr, kr_ptr, x_base, kr_base, r, cols, cmask, mu, cos_ptr, sin_ptr, tab_base, nf, ss, D, NFM,
             SQUARE: tl.constexpr, ROPE: tl.constexpr, FROM_KR: tl.constexpr):
    """Row ``r`` of keys [heads, cols] as the CPU codec quantizes it (float32; with ROPE un-rotated
    as ``rope.rotate(..., inverse=True)`` and written to the float32 key buffer). ``x_base`` and
    ``kr_base``: [heads, 1] element offsets of the heads; ``cmask``: [heads, cols]."""
    r = tl.cast(r, tl.int64)  # a plain loop index in the interpreter
    full = tl.zeros(cmask.shape, tl.int64)
    at = r * D + cols + full
    if FROM_KR:
        v = tl.load(kr_ptr + kr_base + at, mask=cmask, other=0.0)
    elif ROPE:
        xc = tl.load(x_ptr + x_base + at, mask=cmask, other=0.0).to(tl.float32)
        rot = cmask & (cols < 2 * nf)
        low = cols < nf
        partner = tl.where(low, cols + nf, cols - nf)
        xp = tl.load(x_ptr + x_base + r * D + partner + full, mask=rot, other=0.0).to(tl.float32)
        f = tl.where(low, cols, cols - nf) + full
        cs = tl.load(cos_ptr + tab_base + r * NFM + f, mask=rot, other=0.0)
        sn = tl.load(sin_ptr + tab_base + r * NFM + f, mask=rot, other=0.0)
        t1 = xc * cs
        t2 = xp * sn
        # rot * cos - rotate_half(rot) * sin: rotate_half negates the upper half's partner
        u = tl.math.div_rn(tl.where(low, t1 + t2, t1 - t2), tl.zeros_like(t1) + ss)
        v = tl.where(rot, u, xc)
        tl.store(kr_ptr + kr_base + at, v, mask=cmask)
    else:
        v = tl.load(x_ptr + x_base + at, mask=cmask, other=0.0).to(tl.float32)
    if SQUARE:
        dv = v - mu
        v = dv * dv
    return v


@triton.jit
def key_partials_kernel(x_ptr, kr_ptr, mean_ptr, g1_ptr, tail_ptr, flag_ptr, cos_ptr, sin_ptr, rope_ptr, ss_ptr,
                        S, H, NSUB, NG, NFM,
                        D: tl.constexpr, DP: tl.constexpr, HB: tl.constexpr, COL0: tl.constexpr,
                        M: tl.constexpr, STEP: tl.constexpr, SQUARE: tl.constexpr, ROPE: tl.constexpr,
                        FROM_KR: tl.constexpr, CHECK: tl.constexpr):
    """Partial column sums of one level-1 group (STEP * STEP sub-rows) of HB heads' keys of one
    layer, in the CPU cascade's order. Sub-row i is row ``M * i + k``: M = 1 for the cascade
    columns, M = 4 (one program per k) for ``row_sum``'s interleaved ones. Writes, per head, the
    fold of the group's whole chunks (``g1``) and, for the last group, the fold of its leftover
    sub-rows (``tail``). HB = 1 on a GPU; the interpreter takes all heads at once."""
    g = tl.program_id(0)
    q = tl.program_id(1)  # (layer * head_blocks + block) * M + k
    k = q % M
    n_hb = (H + HB - 1) // HB
    layer = (q // M) // n_hb
    hh = ((q // M) - layer * n_hb) * HB + tl.arange(0, HB)
    th = layer * H + hh  # [HB]
    cols = COL0 + tl.arange(0, DP)[None, :]
    cmask = (hh < H)[:, None] & (cols < D)
    x_base = (((layer * 2) * H + hh).to(tl.int64) * S * D)[:, None]
    kr_base = (th.to(tl.int64) * S * D)[:, None]
    mu = tl.zeros([HB, DP], tl.float32)
    if SQUARE:
        mu = tl.load(mean_ptr + th[:, None] * D + cols, mask=cmask, other=0.0)
    nf = 0
    ss = 1.0
    tab_base = 0
    if ROPE:
        nf = tl.load(rope_ptr + 2 * layer)
        tab_base = tl.load(rope_ptr + 2 * layer + 1).to(tl.int64) * S * NFM
        ss = tl.load(ss_ptr + layer)
    first = g * STEP * STEP
    n_here = tl.minimum(STEP * STEP, NSUB - first)
    n_chunks = n_here // STEP
    bad = tl.zeros([HB, DP], tl.int32)
    acc1 = tl.zeros([HB, DP], tl.float32)
    for c in range(0, n_chunks):
        acc0 = tl.zeros([HB, DP], tl.float32)
        for j in tl.static_range(STEP):
            r = (first + c * STEP + j) * M + k
            v = _key_row(x_ptr, kr_ptr, x_base, kr_base, r, cols, cmask, mu, cos_ptr, sin_ptr, tab_base, nf, ss,
                         D, NFM, SQUARE, ROPE, FROM_KR)
            if CHECK:
                bad = bad | ((v - v) != 0).to(tl.int32)  # NaN or Inf
            acc0 = acc0 + v
        acc1 = acc1 + acc0
    slot = (th * M + k)[:, None]  # the head's partials: [(layer * H + head) * M + k]
    lanes = tl.arange(0, DP)[None, :]
    hm = (hh < H)[:, None] & (lanes >= 0)
    tl.store(g1_ptr + (slot * NG + g) * DP + lanes, acc1, mask=hm)
    acc0 = tl.zeros([HB, DP], tl.float32)
    for i in range(first + n_chunks * STEP, first + n_here):  # leftover sub-rows: only the last group has any
        v = _key_row(x_ptr, kr_ptr, x_base, kr_base, i * M + k, cols, cmask, mu, cos_ptr, sin_ptr, tab_base, nf, ss,
                     D, NFM, SQUARE, ROPE, FROM_KR)
        if CHECK:
            bad = bad | ((v - v) != 0).to(tl.int32)
        acc0 = acc0 + v
    tl.store(tail_ptr + slot * DP + lanes, acc0, mask=hm & _spread(g == NG - 1, hm))
    if CHECK:
        tl.atomic_max(flag_ptr + 2 * layer, tl.max(tl.max(tl.where(cmask, bad, 0), axis=1), axis=0))


@triton.jit
def _fold_groups(g1_ptr, tail_ptr, lanes, NSUB, NG, DPX: tl.constexpr, STEP: tl.constexpr):
    """The cascade's result from the per-group partials: ((tail + acc1) + acc2) + acc3."""
    G = STEP * STEP
    n1 = NSUB // G  # whole level-1 groups
    n2 = n1 // STEP  # whole level-2 groups
    acc3 = tl.zeros([DPX], tl.float32)
    for v in range(0, n2):
        g2 = tl.zeros([DPX], tl.float32)
        for u in tl.static_range(STEP):  # unrolled: the STEP loads are in flight together
            g2 = g2 + tl.load(g1_ptr + (v * STEP + u) * DPX + lanes)
        acc3 = acc3 + g2
    acc2 = tl.zeros([DPX], tl.float32)
    for u in range(n2 * STEP, n1):
        acc2 = acc2 + tl.load(g1_ptr + u * DPX + lanes)
    part = (tl.zeros([DPX], tl.int32) + NSUB % G) != 0
    acc1 = tl.load(g1_ptr + n1 * DPX + lanes, mask=part, other=0.0)
    acc0 = tl.load(tail_ptr + lanes, mask=(tl.zeros([DPX], tl.int32) + NG) > 0, other=0.0)
    return ((acc0 + acc1) + acc2) + acc3


@triton.jit
def _finish_moment(total, n, SQUARE: tl.constexpr):
    """sum -> mean (``sum / n``), or sum of squared deviations -> 1 / max(var, tiny)."""
    m = tl.math.div_rn(total, tl.zeros_like(total) + n)  # int n: a plain argument may be a constexpr 1
    if SQUARE:
        m = tl.math.div_rn(tl.full(m.shape, 1.0, tl.float32), tl.maximum(m, 1.1754943508222875e-38))
    return m


@triton.jit
def key_fold_kernel(g1_ptr, tail_ptr, g1b_ptr, tailb_ptr, x_ptr, kr_ptr, mean_ptr, out_ptr, lo_ptr, hi_ptr, zk_ptr,
                    S, H, NSUB, NG, NSUB4, NG4,
                    D: tl.constexpr, DP: tl.constexpr, C32: tl.constexpr, DPB: tl.constexpr,
                    STEP: tl.constexpr, STEP4: tl.constexpr, SQUARE: tl.constexpr, FROM_KR: tl.constexpr):
    """Per (layer, head): every channel's mean (or 1/var) from ``key_partials_kernel``'s partials;
    with SQUARE also resets the channel min/max accumulators and zero keys of ``collect_kernel``."""
    th = tl.program_id(0)
    layer, h = _layer_head(th, H)
    lanes = tl.arange(0, DP)
    cmask = lanes < D
    total = _fold_groups(g1_ptr + th * NG * DP, tail_ptr + th * DP, lanes, NSUB, NG, DP, STEP)
    tl.store(out_ptr + th * D + lanes, _finish_moment(total, S, SQUARE), mask=cmask & (lanes < C32))
    if C32 < D:  # row_sum's columns: four interleaved cascades, leftover rows into the first
        lb = tl.arange(0, DPB)
        cols = C32 + lb
        bm = cols < D
        p0 = _fold_groups(g1b_ptr + (th * 4) * NG4 * DPB, tailb_ptr + (th * 4) * DPB, lb, NSUB4, NG4, DPB, STEP4)
        p1 = _fold_groups(g1b_ptr + (th * 4 + 1) * NG4 * DPB, tailb_ptr + (th * 4 + 1) * DPB, lb, NSUB4, NG4, DPB,
                          STEP4)
        p2 = _fold_groups(g1b_ptr + (th * 4 + 2) * NG4 * DPB, tailb_ptr + (th * 4 + 2) * DPB, lb, NSUB4, NG4, DPB,
                          STEP4)
        p3 = _fold_groups(g1b_ptr + (th * 4 + 3) * NG4 * DPB, tailb_ptr + (th * 4 + 3) * DPB, lb, NSUB4, NG4, DPB,
                          STEP4)
        mu = tl.zeros([DPB], tl.float32)
        if SQUARE:
            mu = tl.load(mean_ptr + th * D + cols, mask=bm, other=0.0)
        x_base = ((layer * 2) * H + h).to(tl.int64) * S * D
        kr_base = (layer * H + h).to(tl.int64) * S * D
        for r in range(4 * NSUB4, S):
            v = _key_row(x_ptr, kr_ptr, x_base, kr_base, r, cols[None, :], bm[None, :], mu[None, :], x_ptr, x_ptr,
                         0, 0, 1.0, D, 1, SQUARE, False, FROM_KR)
            p0 = p0 + tl.reshape(v, [DPB])
        p = ((p0 + p1) + p2) + p3
        tl.store(out_ptr + th * D + cols, _finish_moment(p, S, SQUARE), mask=bm)
    if SQUARE:
        tl.store(lo_ptr + th * D + lanes, tl.zeros([DP], tl.int32) + 0x7F800000, mask=cmask)  # +inf
        tl.store(hi_ptr + th * D + lanes, tl.zeros([DP], tl.int32) - 0x7F800000 - 1, mask=cmask)  # -inf
        tl.store(zk_ptr + th * D + lanes, tl.where(lanes < C32, -1, 0x7FFFFFFF), mask=cmask)


@triton.jit
def _row_sum(rowp, lane, ok, mean, BLOCK_R: tl.constexpr, NV: tl.constexpr, SQUARE: tl.constexpr):
    """Sum of each row of D = 8 * NV contiguous values in the CPU's inner-sum order."""
    p0 = tl.zeros([BLOCK_R, 8], tl.float32)
    p1 = tl.zeros([BLOCK_R, 8], tl.float32)
    p2 = tl.zeros([BLOCK_R, 8], tl.float32)
    p3 = tl.zeros([BLOCK_R, 8], tl.float32)
    for vec in tl.static_range(NV):
        v = tl.load(rowp + (vec * 8 + lane)[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
        if SQUARE:
            dv = v - mean[:, None]
            v = dv * dv
        if vec >= (NV // 4) * 4:  # leftover vectors go to the first accumulator
            p0 = p0 + v
        elif vec % 4 == 0:
            p0 = p0 + v
        elif vec % 4 == 1:
            p1 = p1 + v
        elif vec % 4 == 2:
            p2 = p2 + v
        else:
            p3 = p3 + v
    p = ((p0 + p1) + p2) + p3
    total = tl.zeros([BLOCK_R], tl.float32)
    for ln in tl.static_range(8):
        total = total + tl.sum(tl.where(lane[None, :] == ln, p, 0.0), axis=1)  # one lane: exact
    return total


@triton.jit
def value_moments_kernel(x_ptr, mean_ptr, inv_ptr, hist_ptr, flag_ptr, S, H,
                         D: tl.constexpr, W: tl.constexpr, BLOCK_R: tl.constexpr, HAS_OUT: tl.constexpr,
                         CHECK: tl.constexpr):
    """Per (row block, layer * H + head) of V: each token's mean and 1/var (CPU order), and the
    window histogram of its z-scores (pass 1 of the outlier selection)."""
    rb = tl.program_id(0)
    th = tl.program_id(1)
    layer, h = _layer_head(th, H)
    base = ((layer * 2 + 1) * H + h).to(tl.int64) * S * D
    s = rb * BLOCK_R + tl.arange(0, BLOCK_R)
    ok = s < S
    rowp = x_ptr + base + s[:, None].to(tl.int64) * D
    lane = tl.arange(0, 8)
    zero = tl.zeros([BLOCK_R], tl.float32)
    mean = _finish_moment(_row_sum(rowp, lane, ok, zero, BLOCK_R, D // 8, False), D, False)
    inv = _finish_moment(_row_sum(rowp, lane, ok, mean, BLOCK_R, D // 8, True), D, True)
    vec0 = th * S
    tl.store(mean_ptr + vec0 + s, mean, mask=ok)
    tl.store(inv_ptr + vec0 + s, inv, mask=ok)
    if CHECK or HAS_OUT:
        s3, col, valid, idx = _tile(rb, h, S, D, BLOCK_R, W)
        x = tl.load(x_ptr + base + s3[:, None, None].to(tl.int64) * D + col, mask=valid, other=0.0).to(tl.float32)
        dev = x - mean[:, None, None]  # the registers, not the means just stored (no barrier between them)
        sq = dev * dev
        bits = (sq * inv[:, None, None]).to(tl.int32, bitcast=True)
        if CHECK:
            bad = tl.max(tl.max(tl.max(((x - x) != 0).to(tl.int32), axis=2), axis=1), axis=0)
            tl.atomic_max(flag_ptr + 2 * layer + 1, bad)
        if HAS_OUT:
            hist = _hist(tl.reshape(_window(bits), [BLOCK_R * W * 8]), tl.reshape(valid, [BLOCK_R * W * 8]), 256)
            tl.atomic_add(hist_ptr + (2 * layer + 1) * 256 + tl.arange(0, 256), hist, mask=hist > 0)


@triton.jit
def key_hist_kernel(src_ptr, mean_ptr, inv_ptr, hist_ptr, S, H,
                    D: tl.constexpr, W: tl.constexpr, BLOCK_R: tl.constexpr, PRE: tl.constexpr):
    """Pass 1 of the selection for K: the window histogram of the keys' z-scores."""
    rb = tl.program_id(0)
    th = tl.program_id(1)
    layer, h = _layer_head(th, H)
    if PRE:
        base = th.to(tl.int64) * S * D
    else:
        base = ((layer * 2) * H + h).to(tl.int64) * S * D
    s, col, valid, idx = _tile(rb, h, S, D, BLOCK_R, W)
    x, bits = _key_scores(src_ptr, base, s, col, valid, mean_ptr, inv_ptr, th * D, D)
    hist = _hist(tl.reshape(_window(bits), [BLOCK_R * W * 8]), tl.reshape(valid, [BLOCK_R * W * 8]), 256)
    tl.atomic_add(hist_ptr + (2 * layer) * 256 + tl.arange(0, 256), hist, mask=hist > 0)


# ---- 3. quantize and pack --------------------------------------------------------------------------

@triton.jit
def _nf_code(xn, lv_ptr, NL: tl.constexpr):
    """Nearest NF level: the number of decision boundaries strictly below xn (ties go lower: the CPU
    codec's grid lookup). The boundaries are symmetric with 0 in the middle, so only the positive
    ones are compared with |xn|: strictly for xn > 0, inclusively below (checked equal to the CPU's
    lookup on every float32 in [-1, 1], ``tests/test_kernels_kvquant.py``)."""
    HALF: tl.constexpr = NL // 2
    a = tl.abs(xn)
    above = tl.zeros(xn.shape, tl.int32)
    reach = tl.zeros(xn.shape, tl.int32)
    for j in tl.static_range(HALF - 1):
        b = tl.load(lv_ptr + NL + HALF + j)
        above += (a > b).to(tl.int32)
        reach += (a >= b).to(tl.int32)
    return tl.where(xn > 0, HALF + above, HALF - 1 - reach)


@triton.jit
def _offset_range(lo, hi, SDT: tl.constexpr):
    """The CPU's offset = (hi/2 + lo/2) and range = (hi/2 - lo/2) in the scale dtype (an empty
    vector, all outliers, gets 0 and 0): (offset, range as float32, their bit patterns)."""
    empty = lo > hi
    lo = tl.where(empty, 0.0, lo)
    hi = tl.where(empty, 0.0, hi)
    o, ob = _round_to(hi * 0.5 + lo * 0.5, SDT)
    r, rbits = _round_to(hi * 0.5 - lo * 0.5, SDT)
    return o, r, ob, rbits


@triton.jit
def quant_kernel(src_ptr, mean_ptr, inv_ptr, lo_ptr, hi_ptr, zk_ptr, st_ptr, off_ptr, lv_ptr, pay_ptr, lay_ptr,
                 flag_ptr,
                 S, H, NRB, NTM, COUNT, CODES_OFF, OFFS_OFF, RNG_OFF, VALS_OFF, IDX_OFF,
                 D: tl.constexpr, W: tl.constexpr, BLOCK_R: tl.constexpr, BITS: tl.constexpr, NL: tl.constexpr,
                 SDT: tl.constexpr, SDT_BYTES: tl.constexpr, VDT: tl.constexpr, VDT_BYTES: tl.constexpr,
                 IS_KEY: tl.constexpr, PRE: tl.constexpr, HAS_OUT: tl.constexpr, CHECK: tl.constexpr):
    """Per tile of K or V: outlier mask, normalization, NF codes packed into the payload, the
    tile's outliers (index, exact value) at their places in the sorted lists, and (values: every
    tile; keys: the first tile of each head) the offsets and ranges."""
    rb = tl.program_id(0)
    th = tl.program_id(1)
    layer, h = _layer_head(th, H)
    t = 2 * layer + (0 if IS_KEY else 1)
    pb = tl.load(lay_ptr + layer)  # the layer's payload offset (int64)
    s, col, valid, idx = _tile(rb, h, S, D, BLOCK_R, W)
    ok = s < S
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
        if HAS_OUT:
            x, bits = _value_scores(src_ptr, base, s, col, valid, mean_ptr, inv_ptr, th * S, S, D)
        else:
            x = tl.load(src_ptr + base + s[:, None, None].to(tl.int64) * D + col, mask=valid,
                        other=0.0).to(tl.float32)
            bits = tl.zeros(x.shape, tl.int32)
    sel = valid & (valid == 0)
    if HAS_OUT:
        st = st_ptr + t * 8
        sel = valid & _selected(bits, idx, tl.load(st), tl.load(st + 2), tl.load(st + 3))
    if IS_KEY:
        cm = col < D
        lo = _unordered(tl.load(lo_ptr + th * D + col, mask=cm, other=0))
        hi = _unordered(tl.load(hi_ptr + th * D + col, mask=cm, other=0))
        z = _signed_zero(tl.load(zk_ptr + th * D + col, mask=cm, other=0) & 1)  # the CPU's zero sign
        lo = tl.where(lo == 0, z, lo)
        hi = tl.where(hi == 0, z, hi)
        o, r, ob, rbits = _offset_range(lo, hi, SDT)
        first = cm & _spread(rb == 0, cm)
        vec = h * D + col
    else:
        inl = valid & (sel == 0)
        lo = tl.min(tl.min(tl.where(inl, x, float("inf")), axis=2), axis=1)[:, None, None]
        hi = tl.max(tl.max(tl.where(inl, x, float("-inf")), axis=2), axis=1)[:, None, None]
        zero = inl & (x == 0)
        prio = tl.where(zero, _zero_priority(col, D), -1)
        top = tl.max(tl.max(prio, axis=2), axis=1)[:, None, None]
        neg = (x.to(tl.int32, bitcast=True) >> 31) & 1
        z = _signed_zero(tl.max(tl.max(tl.where(zero & (prio == top), neg, 0), axis=2), axis=1))[:, None, None]
        lo = tl.where(lo == 0, z, lo)  # the sign of zero the CPU's amin/amax return
        hi = tl.where(hi == 0, z, hi)
        o, r, ob, rbits = _offset_range(lo, hi, SDT)
        first = ok[:, None, None] & (col == 0)
        vec = (h * S + s)[:, None, None] + col * 0
    if IS_KEY:
        _store_bytes(pay_ptr, pb + OFFS_OFF + vec.to(tl.int64) * SDT_BYTES, ob, SDT_BYTES, first)
        _store_bytes(pay_ptr, pb + RNG_OFF + vec.to(tl.int64) * SDT_BYTES, rbits, SDT_BYTES, first)
    else:  # one offset and range per token
        at = pb + (h * S + s).to(tl.int64) * SDT_BYTES
        _store_bytes(pay_ptr, OFFS_OFF + at, tl.reshape(ob, [BLOCK_R]), SDT_BYTES, ok)
        _store_bytes(pay_ptr, RNG_OFF + at, tl.reshape(rbits, [BLOCK_R]), SDT_BYTES, ok)
    if CHECK:
        bad = ((o - o) != 0) | ((r - r) != 0)
        tl.atomic_max(flag_ptr, tl.max(tl.max(tl.max((bad & first).to(tl.int32), axis=2), axis=1), axis=0))
    inv = tl.where(r > 0, tl.math.div_rn(tl.full(r.shape, 1.0, tl.float32), tl.where(r > 0, r, 1.0)), 0.0)
    xn = tl.minimum(tl.maximum((x - o) * inv, -1.0), 1.0)
    xn = tl.where(sel, 0.0, xn)  # placeholder code under each outlier (overwritten on decode)
    code = _nf_code(xn, lv_ptr, NL)
    word = tl.sum(code << (tl.arange(0, 8) * BITS)[None, None, :], axis=2)  # [BLOCK_R, W]: 8 codes = BITS bytes
    group = (h * S + s)[:, None] * (D // 8) + tl.arange(0, W)[None, :]
    gmask = ok[:, None] & (tl.arange(0, W)[None, :] < D // 8)
    _store_bytes(pay_ptr, pb + CODES_OFF + group.to(tl.int64) * BITS, word, BITS, gmask)
    if HAS_OUT:
        rank, n_sel = _flat_rank(sel)
        pos = tl.load(off_ptr + t * NTM + h * NRB + rb) + rank
        keep = sel & (pos < COUNT)
        _, vbits = _round_to(x, VDT)
        _store_bytes(pay_ptr, pb + VALS_OFF + pos.to(tl.int64) * VDT_BYTES, vbits, VDT_BYTES, keep)
        _store_bytes(pay_ptr, pb + IDX_OFF + pos.to(tl.int64) * 4, idx, 4, keep)


# ---- decode ----------------------------------------------------------------------------------------

@triton.jit
def _code_at(codes_ptr, e, BITS: tl.constexpr, mask):
    """The BITS-bit code of flat element ``e`` in a packed section (a 3-bit code may span two bytes)."""
    bit = e.to(tl.int64) * BITS
    at = bit >> 3
    shift = (bit & 7).to(tl.int32)
    pair = tl.load(codes_ptr + at, mask=mask, other=0).to(tl.int32)
    pair = pair | (tl.load(codes_ptr + at + 1, mask=mask & (shift + BITS > 8), other=0).to(tl.int32) << 8)
    return (pair >> shift) & ((1 << BITS) - 1)


@triton.jit
def _scale_at(pay_ptr, at, SDT: tl.constexpr, SDT_BYTES: tl.constexpr, mask):
    return _from_bits(_load_bytes(pay_ptr, at, SDT_BYTES, mask), SDT)


@triton.jit
def _dequant_at(pay_ptr, pb, lv_ptr, e, vec, CODES_OFF, OFFS_OFF, RNG_OFF, LIMIT, BITS: tl.constexpr,
                SDT: tl.constexpr, SDT_BYTES: tl.constexpr, mask):
    """The CPU's ``addcmul(offset, level, range).clamp(-limit, limit)`` of flat element ``e``."""
    code = _code_at(pay_ptr + pb + CODES_OFF, e, BITS, mask)
    lv = tl.load(lv_ptr + code, mask=mask, other=0.0)
    o = _scale_at(pay_ptr, pb + OFFS_OFF + vec.to(tl.int64) * SDT_BYTES, SDT, SDT_BYTES, mask)
    r = _scale_at(pay_ptr, pb + RNG_OFF + vec.to(tl.int64) * SDT_BYTES, SDT, SDT_BYTES, mask)
    return tl.minimum(tl.maximum(tl.fma(lv, r, o), -LIMIT), LIMIT)


@triton.jit
def _rotate(p, partner, low, cs, sn):
    """transformers' RoPE of one element: rot * cos + rotate_half(rot) * sin."""
    t1 = p * cs
    t2 = partner * sn
    return tl.where(low, t1 - t2, t1 + t2)


@triton.jit
def _store_out(out_ptr, at, y, OUT_DT: tl.constexpr, mask):
    """float32 ``y`` rounded to the cache dtype, stored as its bit pattern (``out_ptr`` is an int16
    view of a 16-bit cache, an int32 view of a float32 one)."""
    if OUT_DT == 0:
        tl.store(out_ptr + at, y.to(tl.float16).to(tl.int16, bitcast=True), mask=mask)
    elif OUT_DT == 1:
        tl.store(out_ptr + at, bf16_bits(y).to(tl.int16), mask=mask)
    else:
        tl.store(out_ptr + at, y.to(tl.int32, bitcast=True), mask=mask)


@triton.jit
def dequant_kernel(pay_ptr, lay_ptr, lv_ptr, out_ptr, cos_ptr, sin_ptr, rope_ptr, S, H, NFM, LIMIT,
                   CODES_OFF, OFFS_OFF, RNG_OFF,
                   D: tl.constexpr, W: tl.constexpr, BLOCK_R: tl.constexpr, BITS: tl.constexpr,
                   SDT: tl.constexpr, SDT_BYTES: tl.constexpr, OUT_DT: tl.constexpr, IS_KEY: tl.constexpr,
                   PRE: tl.constexpr):
    """Per tile of K or V: codes -> NF levels -> fma(level, range, offset) -> clamp -> (pre-RoPE
    keys: rotated with the partner column, in float32 as ``rope.rotate``) -> the cache dtype. The
    outliers' places get their placeholder codes' values here; ``outlier_kernel`` overwrites them."""
    rb = tl.program_id(0)
    th = tl.program_id(1)
    layer, h = _layer_head(th, H)
    pb = tl.load(lay_ptr + layer)
    s, col, valid, idx = _tile(rb, h, S, D, BLOCK_R, W)
    ok = s < S
    group = (h * S + s)[:, None] * (D // 8) + tl.arange(0, W)[None, :]
    gmask = ok[:, None] & (tl.arange(0, W)[None, :] < D // 8)
    word = _load_bytes(pay_ptr, pb + CODES_OFF + group.to(tl.int64) * BITS, BITS, gmask)
    code = (word[:, :, None] >> (tl.arange(0, 8) * BITS)[None, None, :]) & ((1 << BITS) - 1)
    lv = tl.load(lv_ptr + code)
    if IS_KEY:  # per channel: loaded once per tile
        at = pb + (h * D + col).to(tl.int64) * SDT_BYTES
        o = _scale_at(pay_ptr, OFFS_OFF + at, SDT, SDT_BYTES, col < D)
        r = _scale_at(pay_ptr, RNG_OFF + at, SDT, SDT_BYTES, col < D)
    else:  # per token
        at = pb + (h * S + s).to(tl.int64) * SDT_BYTES
        o = _scale_at(pay_ptr, OFFS_OFF + at, SDT, SDT_BYTES, ok)[:, None, None]
        r = _scale_at(pay_ptr, RNG_OFF + at, SDT, SDT_BYTES, ok)[:, None, None]
    y = tl.minimum(tl.maximum(tl.fma(lv, r, o), -LIMIT), LIMIT)
    if PRE:
        nf = tl.load(rope_ptr + 2 * layer)
        tab = tl.load(rope_ptr + 2 * layer + 1).to(tl.int64) * S * NFM
        rot = valid & (col < 2 * nf)
        low = col < nf
        pcol = tl.where(low, col + nf, col - nf)
        pat = pb + (h * D + pcol).to(tl.int64) * SDT_BYTES
        po = _scale_at(pay_ptr, OFFS_OFF + pat, SDT, SDT_BYTES, (col < 2 * nf) & (col < D))
        pr = _scale_at(pay_ptr, RNG_OFF + pat, SDT, SDT_BYTES, (col < 2 * nf) & (col < D))
        pcode = _code_at(pay_ptr + pb + CODES_OFF, idx - col + pcol, BITS, rot)
        plv = tl.load(lv_ptr + pcode, mask=rot, other=0.0)
        partner = tl.minimum(tl.maximum(tl.fma(plv, pr, po), -LIMIT), LIMIT)
        f = tl.where(low, col, col - nf)
        cs = tl.load(cos_ptr + tab + s[:, None, None].to(tl.int64) * NFM + f, mask=rot, other=0.0)
        sn = tl.load(sin_ptr + tab + s[:, None, None].to(tl.int64) * NFM + f, mask=rot, other=0.0)
        y = tl.where(rot, _rotate(y, partner, low, cs, sn), y)
        y = tl.minimum(tl.maximum(y, -LIMIT), LIMIT)
    if IS_KEY:
        out_base = ((layer * 2) * H + h).to(tl.int64) * S * D
    else:
        out_base = ((layer * 2 + 1) * H + h).to(tl.int64) * S * D
    _store_out(out_ptr, out_base + s[:, None, None].to(tl.int64) * D + col, y, OUT_DT, valid)


@triton.jit
def _find(idx_ptr, target, COUNT, LOG: tl.constexpr, mask):
    """Whether ``target`` is in the sorted int32 list (bytes at ``idx_ptr``), and its position."""
    lo = tl.zeros_like(target)
    hi = tl.zeros_like(target) + COUNT
    for _ in tl.static_range(LOG):
        mid = (lo + hi) // 2
        v = _load_bytes(idx_ptr, mid.to(tl.int64) * 4, 4, mask & (lo < hi))
        go_right = v < target
        lo = tl.where((lo < hi) & go_right, mid + 1, lo)
        hi = tl.where((lo < hi) & (go_right == 0), mid, hi)
    found = mask & (lo < COUNT) & (_load_bytes(idx_ptr, lo.to(tl.int64) * 4, 4, mask & (lo < COUNT)) == target)
    return found, lo


@triton.jit
def outlier_kernel(pay_ptr, lay_ptr, lv_ptr, out_ptr, cos_ptr, sin_ptr, rope_ptr, COUNT, S, H, NFM, LIMIT,
                   CODES_OFF, OFFS_OFF, RNG_OFF, VALS_OFF, IDX_OFF,
                   D: tl.constexpr, BITS: tl.constexpr, SDT: tl.constexpr, SDT_BYTES: tl.constexpr,
                   VDT: tl.constexpr, VDT_BYTES: tl.constexpr, IS_KEY: tl.constexpr, PRE: tl.constexpr,
                   LOG: tl.constexpr, BLOCK: tl.constexpr):
    """The exact outliers of K or V scattered into the decoded cache; for pre-RoPE keys the rotated
    pair (the outlier and its partner column) recomputed from the exact pre-RoPE value."""
    layer = tl.program_id(1)
    j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = j < COUNT
    pb = tl.load(lay_ptr + layer)
    idx = _load_bytes(pay_ptr, pb + IDX_OFF + j.to(tl.int64) * 4, 4, m)
    vb = _load_bytes(pay_ptr, pb + VALS_OFF + j.to(tl.int64) * VDT_BYTES, VDT_BYTES, m)
    if IS_KEY:
        out_base = (layer * 2).to(tl.int64) * H * S * D
    else:
        out_base = (layer * 2 + 1).to(tl.int64) * H * S * D
    if PRE:
        row = idx // D
        col = idx - row * D
        h = row // S
        s = row - h * S
        nf = tl.load(rope_ptr + 2 * layer)
        tab = tl.load(rope_ptr + 2 * layer + 1).to(tl.int64) * S * NFM
        p = _from_bits(vb, VDT)  # the outlier, exact, as float32
        rot = m & (col < 2 * nf)
        low = col < nf
        pcol = tl.where(low, col + nf, col - nf)
        pidx = idx - col + pcol
        found, at = _find(pay_ptr + pb + IDX_OFF, pidx, COUNT, LOG, rot)
        pv = _from_bits(_load_bytes(pay_ptr, pb + VALS_OFF + at.to(tl.int64) * VDT_BYTES, VDT_BYTES, found), VDT)
        deq = _dequant_at(pay_ptr, pb, lv_ptr, pidx, h * D + pcol, CODES_OFF, OFFS_OFF, RNG_OFF, LIMIT, BITS, SDT,
                          SDT_BYTES, rot & (found == 0))
        partner = tl.where(found, pv, deq)
        f = tl.where(low, col, col - nf)
        cs = tl.load(cos_ptr + tab + s.to(tl.int64) * NFM + f, mask=rot, other=0.0)
        sn = tl.load(sin_ptr + tab + s.to(tl.int64) * NFM + f, mask=rot, other=0.0)
        y = tl.where(rot, _rotate(p, partner, low, cs, sn), p)
        y = tl.minimum(tl.maximum(y, -LIMIT), LIMIT)
        # the partner's output: its own rotation (same frequency) with this outlier as its partner
        y2 = tl.minimum(tl.maximum(_rotate(partner, p, low == 0, cs, sn), -LIMIT), LIMIT)
        _store_out(out_ptr, out_base + idx, y, VDT, m)
        _store_out(out_ptr, out_base + pidx, y2, VDT, rot)
    else:
        if VDT == 2:
            tl.store(out_ptr + out_base + idx, vb, mask=m)
        else:
            tl.store(out_ptr + out_base + idx, vb.to(tl.int16), mask=m)
