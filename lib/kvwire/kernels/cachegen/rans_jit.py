"""The ``@triton.jit`` kernels of cachegen's ``entropy="rans_lanes"``: the interleaved rANS coder of
``codecs/rans_lanes.py`` on the device (launched by ``lanes.py``), byte for byte.

One program codes one stream's ``LANES`` lanes as one vector: step ``t`` touches the symbols
``t * LANES .. t * LANES + LANES - 1`` (coalesced), the encoder walks the steps backwards, the decoder
forwards. States are int64 holding the 32-bit rANS state (no unsigned arithmetic: the same semantics
compiled and interpreted); nothing here needs a feature newer than Triton 3.x's basics (runtime loop
bounds, masked loads and stores, integer division).

Stream descriptors (int64 rows, one per stream, ``DESC`` columns):
    0 symbol offset (in the symbol tensor, flat)   1 n symbols   2 symbols per table (``group``)
    3 first table row (freq / cum rows of 256)     4 scratch offset (encode) / first word byte (decode)
    5 per-lane scratch capacity (encode)           6 bits (decode: binary search depth)
"""

from __future__ import annotations

import triton
import triton.language as tl

DESC = 8
ROW = 256  # freq / cum rows are 256 wide whatever the alphabet (zeros / PROB_SCALE past it)


@triton.jit
def _stream(desc_ptr, k):
    """Stream ``k``'s descriptor (8 int64): symbols' offset, symbol count, symbols per table, first table row."""
    d = desc_ptr + k * 8
    return tl.load(d + 0), tl.load(d + 1), tl.load(d + 2), tl.load(d + 3)


@triton.jit
def rans_lanes_encode_kernel(sym_ptr, freq_ptr, cum_ptr, desc_ptr, scratch_ptr, state_ptr, count_ptr,
                             LANES: tl.constexpr, PROB_BITS: tl.constexpr, RANS_L: tl.constexpr):
    """Stream ``program_id(0)``: every lane's words, written backwards into the lane's scratch region
    (``cap`` int16 slots: lane j's words end at ``scratch + j * cap + cap``, in the decoder's order),
    its final state (int64 [streams, LANES]) and its word count (int32 [streams, LANES])."""
    k = tl.program_id(0)
    src, n, group, row0 = _stream(desc_ptr, k)
    scr = tl.load(desc_ptr + k * 8 + 4)
    cap = tl.load(desc_ptr + k * 8 + 5)
    lane = tl.arange(0, LANES)
    end = scr + lane.to(tl.int64) * cap + cap - 1  # the slot of each lane's first emitted word
    x = tl.full([LANES], RANS_L, tl.int64)
    cnt = tl.zeros([LANES], tl.int64)
    steps = (n + LANES - 1) // LANES
    for it in range(0, steps):
        i = (steps - 1 - it) * LANES + lane
        active = i < n
        s = tl.load(sym_ptr + src + i, mask=active, other=0).to(tl.int64)
        at = (row0 + i // group) * 256 + s
        f = tl.load(freq_ptr + at, mask=active, other=1).to(tl.int64)
        c = tl.load(cum_ptr + at, mask=active, other=0).to(tl.int64)
        emit = active & (x >= (f << (32 - PROB_BITS)))
        tl.store(scratch_ptr + end - cnt, (x & 0xFFFF).to(tl.int16), mask=emit)
        cnt += emit.to(tl.int64)
        x = tl.where(emit, x >> 16, x)
        x = tl.where(active, ((x // f) << PROB_BITS) + x % f + c, x)
    tl.store(state_ptr + k * LANES + lane, x)
    tl.store(count_ptr + k * LANES + lane, cnt.to(tl.int32))


@triton.jit
def rans_lanes_decode_kernel(pay_ptr, freq_ptr, cum_ptr, desc_ptr, state_ptr, start_ptr, count_ptr, sym_ptr,
                             flag_ptr, LANES: tl.constexpr, PROB_BITS: tl.constexpr, RANS_L: tl.constexpr):
    """Stream ``program_id(0)``: its ``n`` symbols (uint8, into ``sym`` at the descriptor's offset) from
    the lanes' initial states (int64 [streams, LANES]), word starts (absolute byte offsets in the
    payload) and counts. ``flag`` [3] (int32) counts lanes that ran out of words, lanes with words
    left, lanes not ending in ``RANS_L``; a lane never reads past its own words."""
    k = tl.program_id(0)
    dst, n, group, row0 = _stream(desc_ptr, k)
    bits = tl.load(desc_ptr + k * 8 + 6).to(tl.int32)
    lane = tl.arange(0, LANES)
    x = tl.load(state_ptr + k * LANES + lane)
    start = tl.load(start_ptr + k * LANES + lane)
    cnt = tl.load(count_ptr + k * LANES + lane)
    pos = tl.zeros([LANES], tl.int64)
    one = tl.full([LANES], 1, tl.int64)
    over = tl.zeros([LANES], tl.int32)
    steps = (n + LANES - 1) // LANES
    for t in range(0, steps):
        i = t * LANES + lane
        active = i < n
        base = (row0 + i // group) * 256
        slot = x & ((1 << PROB_BITS) - 1)
        s = tl.zeros([LANES], tl.int64)
        for b in range(0, bits):  # the largest s with cum[s] <= slot (cum[0] == 0)
            cand = s + (one << (bits - 1 - b).to(tl.int64))
            cv = tl.load(cum_ptr + base + cand, mask=active, other=1 << 30).to(tl.int64)
            s = tl.where(cv <= slot, cand, s)
        f = tl.load(freq_ptr + base + s, mask=active, other=0).to(tl.int64)
        c = tl.load(cum_ptr + base + s, mask=active, other=0).to(tl.int64)
        x = tl.where(active, f * (x >> PROB_BITS) + slot - c, x)
        need = active & (x < RANS_L)
        ok = need & (pos < cnt)
        over += (need & (pos >= cnt)).to(tl.int32)
        at = start + 2 * pos
        w = tl.load(pay_ptr + at, mask=ok, other=0).to(tl.int64) | \
            (tl.load(pay_ptr + at + 1, mask=ok, other=0).to(tl.int64) << 8)
        x = tl.where(need, (x << 16) | w, x)
        pos += need.to(tl.int64)
        tl.store(sym_ptr + dst + i, s.to(tl.uint8), mask=active)
    tl.atomic_add(flag_ptr + 0, tl.sum((over > 0).to(tl.int32), axis=0))
    tl.atomic_add(flag_ptr + 1, tl.sum((pos != cnt).to(tl.int32), axis=0))
    tl.atomic_add(flag_ptr + 2, tl.sum((x != RANS_L).to(tl.int32), axis=0))
