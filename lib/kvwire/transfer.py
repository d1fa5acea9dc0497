"""Analytical transfer model: when does compressing the KV cache beat sending it raw?

A cache of L layers crosses a link of bandwidth B (bits/s) with one-way latency ``lat``.
Per layer i the codec spends ``enc_i`` seconds encoding, the link ``8 * w_i / B`` seconds
carrying ``w_i`` wire bytes, and the receiver ``dec_i`` seconds decoding.

- baseline (no codec): the raw bytes ``r`` go straight onto the link: ``lat + 8 r / B``.
- sequential: encode everything, send, decode everything:
  ``sum(enc) + lat + 8 sum(w) / B + sum(dec)``.
- layer-pipelined: a three-stage flow shop (encoder, link, decoder), layer i+1 encoded while
  layer i is on the wire; stage j of layer i starts when stage j of layer i-1 and stage j-1 of
  layer i are both done.

Break-even bandwidth: the highest B at which the codec's end-to-end time is below the
baseline's. ``B * T_codec(B)`` rises strictly with B (every path through the flow shop is
``compute + bytes/B``), so ``B * (T_base - T_codec) = 8r - B T_codec(B)`` has one root:
closed form for sequential, bisection to relative 1e-12 for pipelined -- solved
continuously, not read off a grid. No break-even (codec never wins, e.g. identity) is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class CodecCost:
    """Measured per-layer cost of one codec on one cache (bytes as sent, seconds as timed)."""

    raw_bytes: int
    wire_bytes: Sequence[int]  # per layer, container header/trailer folded into the first/last frame
    encode_s: Sequence[float]
    decode_s: Sequence[float]

    def __post_init__(self) -> None:
        if not (len(self.wire_bytes) == len(self.encode_s) == len(self.decode_s) > 0):
            raise ValueError("per-layer wire_bytes, encode_s and decode_s must have one equal, non-zero length")
        if min(self.encode_s) < 0 or min(self.decode_s) < 0 or min(self.wire_bytes) < 0 or self.raw_bytes <= 0:
            raise ValueError("times and byte counts must be non-negative and raw_bytes positive")

    @classmethod
    def uniform(cls, raw_bytes: int, wire_bytes: float, encode_s: float, decode_s: float,
                layer_tokens: Sequence[int]) -> "CodecCost":
        """Whole-cache measurements (payload bytes, encode and decode seconds) split over the layers in
        proportion to each layer's tokens (evenly where they are equal): the per-layer costs the
        pipelined model needs where only the whole cache was timed (GPU kernels, a whole-server CPU run,
        a table's per-cache times). Wire bytes are whole bytes per layer (rounded down)."""
        total = sum(layer_tokens)
        if not layer_tokens or total <= 0 or min(layer_tokens) < 0:
            raise ValueError(f"layer tokens {list(layer_tokens)[:8]} do not split a cache")
        return cost_from_arrays(raw_bytes, [wire_bytes * t / total for t in layer_tokens],
                                [encode_s * t / total for t in layer_tokens], [decode_s * t / total for t in layer_tokens])

    @property
    def total_wire_bytes(self) -> int:
        return int(sum(self.wire_bytes))

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.total_wire_bytes


def gbps_to_bits(gbps: float) -> float:
    return gbps * 1e9


def baseline_time(raw_bytes: float, gbps: float, latency_s: float = 0.0) -> float:
    return latency_s + 8.0 * raw_bytes / gbps_to_bits(gbps)


def sequential_time(cost: CodecCost, gbps: float, latency_s: float = 0.0) -> float:
    return sum(cost.encode_s) + latency_s + 8.0 * cost.total_wire_bytes / gbps_to_bits(gbps) + sum(cost.decode_s)


def pipelined_time(cost: CodecCost, gbps: float, latency_s: float = 0.0) -> float:
    bits = gbps_to_bits(gbps)
    enc_done = link_done = dec_done = 0.0
    for enc, w, dec in zip(cost.encode_s, cost.wire_bytes, cost.decode_s):
        enc_done += enc
        link_done = max(link_done, enc_done) + 8.0 * w / bits
        dec_done = max(dec_done, link_done) + dec
    return latency_s + dec_done


MODES = {"sequential": sequential_time, "pipelined": pipelined_time}


def speedup(cost: CodecCost, gbps: float, mode: str = "sequential", latency_s: float = 0.0) -> float:
    return baseline_time(cost.raw_bytes, gbps, latency_s) / MODES[mode](cost, gbps, latency_s)


def break_even_gbps(cost: CodecCost, mode: str = "sequential") -> float:
    """Highest bandwidth (Gbps) at which the codec is faster end to end than raw transfer.

    Latency is added equally to both sides, so it cancels. Returns 0.0 when the codec never
    wins (it does not shrink the bytes) and ``inf`` when it costs no time at all.
    """
    r, w = float(cost.raw_bytes), float(cost.total_wire_bytes)
    if w >= r:
        return 0.0
    compute = sum(cost.encode_s) + sum(cost.decode_s)
    if compute <= 0.0:
        return math.inf
    if mode == "sequential":
        return 8.0 * (r - w) / compute / 1e9
    if mode != "pipelined":
        raise ValueError(f"unknown transfer mode {mode!r}; known: {sorted(MODES)}")
    f = MODES[mode]

    def gap(gbps: float) -> float:  # > 0 while the codec wins
        return baseline_time(r, gbps) - f(cost, gbps)

    lo = break_even_gbps(cost, "sequential")  # pipelining only helps: its break-even is at least this
    hi = 8.0 * r / max(max(sum(cost.encode_s), sum(cost.decode_s)), 1e-300) / 1e9
    if gap(hi) >= 0:  # cannot happen by the bound above; kept so a bug shows, not hides
        return hi
    if lo <= 0 or gap(lo) < 0:
        lo = hi * 1e-12
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if gap(mid) > 0:
            lo = mid
        else:
            hi = mid
        if hi / lo - 1.0 < 1e-12:
            break
    return lo


def sweep(cost: CodecCost, bandwidths_gbps: Sequence[float], latency_s: float = 0.0) -> list[dict[str, float]]:
    """Times and speed-ups of one codec at every bandwidth, both modes."""
    rows = []
    for gbps in bandwidths_gbps:
        base = baseline_time(cost.raw_bytes, gbps, latency_s)
        seq = sequential_time(cost, gbps, latency_s)
        pipe = pipelined_time(cost, gbps, latency_s)
        rows.append({"bandwidth_gbps": float(gbps), "baseline_s": base, "sequential_s": seq,
                     "pipelined_s": pipe, "speedup_sequential": base / seq, "speedup_pipelined": base / pipe})
    return rows


def cost_from_arrays(raw_bytes: int, wire_bytes, encode_s, decode_s) -> CodecCost:
    return CodecCost(int(raw_bytes), [int(x) for x in np.asarray(wire_bytes)],
                     [float(x) for x in np.asarray(encode_s)], [float(x) for x in np.asarray(decode_s)])
