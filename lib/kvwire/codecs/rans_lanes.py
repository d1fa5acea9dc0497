"""Interleaved rANS over ``LANES`` independent lanes: cachegen's ``entropy="rans_lanes"`` stage (CPU reference).

The ``constriction`` coder behind ``entropy="rans"`` is one stack over the whole stream: every symbol
waits for the previous one, so it cannot run on a GPU. This coder splits a stream into ``LANES``
independent rANS coders: symbol ``i`` of the flat stream belongs to lane ``i % LANES``, so step ``t``
of every lane codes the ``LANES`` consecutive symbols ``t * LANES .. t * LANES + LANES - 1`` (a GPU
program holds the lanes as one vector and its loads are coalesced). The Triton kernels in
``kernels/cachegen/rans_jit.py`` write exactly these bytes; this module is the reference, vectorised
across lanes (a Python loop over the steps, never over single symbols).

Coder (per lane, the classic byte-oriented rANS with 16-bit words):

- state ``x``: 32 bits, kept in ``[RANS_L, 2**32)`` with ``RANS_L = 2**16``;
- probabilities quantized to ``PROB_BITS = 14`` bits (``quantize``: pure integer arithmetic, the same
  on the host and the device): ``freq[s]`` sums to ``2**14`` over the alphabet, every symbol with a
  non-zero count keeps ``freq >= 1``; ``cum`` is its exclusive prefix sum;
- encode (symbols in reverse): if ``x >= freq[s] << (32 - PROB_BITS)`` emit ``x & 0xFFFF`` and shift
  ``x`` right by 16 (at most once per symbol), then ``x = (x // freq[s] << PROB_BITS) + x % freq[s] +
  cum[s]``; the lane starts in ``RANS_L``;
- decode (forward): ``slot = x & (2**14 - 1)``, ``s`` the symbol with ``cum[s] <= slot < cum[s + 1]``,
  ``x = freq[s] * (x >> PROB_BITS) + slot - cum[s]``, and while ``x < RANS_L`` (at most once) read the
  lane's next word: ``x = x << 16 | word``. A correct lane ends in exactly ``RANS_L`` having read
  exactly its words.

Which frequency table a symbol uses is the stream's business (cachegen: one table per group of
``group`` consecutive symbols of the flat stream, ``table = i // group``).

Bytes written by ``encode`` (after cachegen's mode byte and uint8 count tables), little-endian:

    LANES x uint32   each lane's final encoder state (the decoder's initial state), in [2**16, 2**32)
    LANES x uint32   each lane's word count (at most its number of symbols: one word per symbol)
    words            uint16, lane 0's words, then lane 1's, ... each lane's in the order the decoder
                     reads them (the reverse of the encoder's emission order)

Every field is checked on decode (``WireError`` naming the problem): the counts against the bytes
present and against each lane's symbols (before anything is allocated from them), the states'
range, every lane reading no more and no fewer than its words and ending in ``RANS_L``.
"""

from __future__ import annotations

import numpy as np

from ..errors import WireError

LANES = 32
PROB_BITS = 14
PROB_SCALE = 1 << PROB_BITS
RANS_L = 1 << 16  # lower bound of the normalised state; the decoder's final state
WORD_BITS = 16
HEADER_BYTES = 8 * LANES  # final states + word counts


def quantize(tables: np.ndarray) -> np.ndarray:
    """uint8 count tables [T, A] -> int64 frequencies [T, A], each row summing to ``PROB_SCALE``.

    Every symbol with a count > 0 gets 1, the remaining ``PROB_SCALE - occurring`` slots are shared in
    proportion to the counts (floor), and what the floors leave (< occurring) goes to the first most
    frequent symbol. A row of zeros stays zeros (the caller refuses such tables). Integers only: the
    device's ``kernels/cachegen/lanes.quantize_device`` does exactly the same.
    """
    t = np.asarray(tables).astype(np.int64)
    occ = t > 0
    n_occ = occ.sum(axis=1, keepdims=True)
    total = t.sum(axis=1, keepdims=True)
    f = np.where(occ, 1 + t * (PROB_SCALE - n_occ) // np.maximum(total, 1), 0)
    left = PROB_SCALE - f.sum(axis=1)
    top = np.argmax(t, axis=1)  # the first maximum
    f[np.arange(len(t)), top] += np.where(total[:, 0] > 0, left, 0)
    return f


def lane_symbols(n: int) -> np.ndarray:
    """How many of ``n`` symbols each lane codes (lane j: symbols j, j + LANES, ...)."""
    return np.maximum(0, (n - np.arange(LANES) + LANES - 1) // LANES)


def _per_symbol(freq: np.ndarray, symbols: np.ndarray, group: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(freq, cum) of every symbol padded to [steps, LANES] (padding: freq 1, cum 0)."""
    n = len(symbols)
    cum = np.cumsum(freq, axis=1) - freq
    table = np.arange(n, dtype=np.int64) // group
    f = np.ones(steps * LANES, dtype=np.uint64)
    c = np.zeros(steps * LANES, dtype=np.uint64)
    f[:n] = freq[table, symbols]
    c[:n] = cum[table, symbols]
    return f.reshape(steps, LANES), c.reshape(steps, LANES)


def encode(symbols: np.ndarray, freq: np.ndarray, group: int) -> bytes:
    """The lane header and words of ``symbols`` (ints in [0, A), flat) under ``freq`` [T, A]
    (``quantize``'s), symbol i using table ``i // group``; every symbol must have freq >= 1."""
    symbols = np.asarray(symbols).reshape(-1).astype(np.int64)
    n = len(symbols)
    steps = -(-n // LANES)
    f_all, c_all = _per_symbol(freq, symbols, group, steps)
    if n and int(f_all.reshape(-1)[:n].min()) < 1:
        raise ValueError("rans_lanes: a symbol has frequency 0 in its table")
    active_last = np.arange(LANES) < n - (steps - 1) * LANES
    x = np.full(LANES, RANS_L, dtype=np.uint64)
    words = np.empty((steps, LANES), dtype=np.uint16)
    emit = np.zeros((steps, LANES), dtype=bool)
    shift = np.uint64(32 - PROB_BITS)
    pb, wb, mask = np.uint64(PROB_BITS), np.uint64(WORD_BITS), np.uint64(0xFFFF)
    for t in range(steps - 1, -1, -1):
        f, c = f_all[t], c_all[t]
        e = x >= (f << shift)
        if t == steps - 1:
            e &= active_last
        words[t] = x & mask
        emit[t] = e
        x = np.where(e, x >> wb, x)
        q, r = np.divmod(x, f)
        y = (q << pb) + r + c
        x = y if t < steps - 1 else np.where(active_last, y, x)
    counts = emit.sum(axis=0).astype("<u4")
    body = words.T[emit.T].astype("<u2")  # lane-major, steps ascending: the decoder's reading order
    return x.astype("<u4").tobytes() + counts.tobytes() + body.tobytes()


def parse_header(body: memoryview | bytes, n: int, what: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(initial states int64 [LANES], word counts int64 [LANES], total words) of a lane stream holding
    ``n`` symbols, every field checked against the bytes present."""
    if len(body) < HEADER_BYTES:
        raise WireError(f"{what}: rans_lanes stream of {len(body)} bytes is shorter than its "
                        f"{HEADER_BYTES}-byte lane header")
    head = np.frombuffer(body[:HEADER_BYTES], dtype="<u4").astype(np.int64)
    states, counts = head[:LANES], head[LANES:]
    return (*check_header(states, counts, n, len(body) - HEADER_BYTES, what),)


def check_header(states: np.ndarray, counts: np.ndarray, n: int, word_bytes: int,
                 what: str) -> tuple[np.ndarray, np.ndarray, int]:
    """The lane header's checks (shared with the device decoder, which reads the header to the host)."""
    if (counts > lane_symbols(n)).any():
        j = int(np.argmax(counts > lane_symbols(n)))
        raise WireError(f"{what}: rans_lanes lane {j} claims {int(counts[j])} words for "
                        f"{int(lane_symbols(n)[j])} symbols (corrupted lane counts)")
    total = int(counts.sum())
    if 2 * total != word_bytes:
        raise WireError(f"{what}: rans_lanes lane word counts add up to {total} words but "
                        f"{word_bytes} bytes follow the lane header")
    if ((states < RANS_L) | (states >= 1 << 32)).any():
        raise WireError(f"{what}: rans_lanes lane state out of range (corrupted lane header)")
    return states, counts, total


def decode(body: memoryview | bytes, n: int, freq: np.ndarray, group: int, what: str) -> np.ndarray:
    """Inverse of :func:`encode`: ``n`` symbols (int64) from ``body`` (lane header + words)."""
    states, counts, total = parse_header(body, n, what)
    if (freq.sum(axis=1) != PROB_SCALE).any():
        raise WireError(f"{what}: rans_lanes frequency table is empty (all zero)")
    steps = -(-n // LANES)
    words = np.zeros(total + 1, dtype=np.int64)  # + 1: a harmless slot for lanes with no word left
    words[:total] = np.frombuffer(body[HEADER_BYTES:], dtype="<u2")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    n_tables, alphabet = freq.shape
    cum = np.cumsum(freq, axis=1) - freq
    lut = np.repeat(np.tile(np.arange(alphabet, dtype=np.int64), n_tables), freq.reshape(-1)).reshape(
        n_tables, PROB_SCALE)  # rows sum to PROB_SCALE (quantize)
    x = states.copy()
    pos = np.zeros(LANES, dtype=np.int64)
    overrun = np.zeros(LANES, dtype=bool)
    out = np.empty((steps, LANES), dtype=np.int64)
    lanes = np.arange(LANES)
    for t in range(steps):
        i = t * LANES + lanes
        active = i < n
        g = np.minimum(i // group, n_tables - 1)
        slot = x & (PROB_SCALE - 1)
        s = lut[g, slot]
        y = freq[g, s] * (x >> PROB_BITS) + slot - cum[g, s]
        x = np.where(active, y, x)
        need = active & (x < RANS_L)
        overrun |= need & (pos >= counts)
        w = words[np.where(pos < counts, starts + pos, total)]
        x = np.where(need, (x << WORD_BITS) | w, x)
        pos += need
        out[t] = s
    if overrun.any():
        raise WireError(f"{what}: rans_lanes lane {int(np.argmax(overrun))} ran out of words (corrupted stream)")
    if (pos != counts).any():
        raise WireError(f"{what}: rans_lanes lane {int(np.argmax(pos != counts))} has words left after its "
                        f"symbols (corrupted stream)")
    if (x != RANS_L).any():
        raise WireError(f"{what}: rans_lanes lane {int(np.argmax(x != RANS_L))} does not end in the initial "
                        f"state (corrupted stream)")
    return out.reshape(-1)[:n]
