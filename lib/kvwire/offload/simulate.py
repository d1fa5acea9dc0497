"""A discrete-event SIMULATION of paged decode: a compute stream and a copy engine, timed from a
calibration of measured numbers (page-copy latency and bandwidth, per-layer compute, decode of a
compressed page). It runs anywhere (CI has no GPU) and predicts what the GPU replay measures; every
table and figure that shows its numbers says "simulation".

Timeline (the GPU replay executes the same plan the same way): time 0 is "the KV is in host
memory". Per (step, layer): wait for in-flight prefetches of the pages it needs; fetch misses on
the compute stream (the step stalls for them: latency + bytes / bandwidth each, plus the codec's
decode); compute; then queue the layer's prefetches on the copy engine (FIFO), which decode on
arrival. After the last layer, the LM head. ``all_gpu`` first uploads the whole cache in one copy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import OffloadError
from .policy import LayerEvent


@dataclass
class Calibration:
    """Measured costs, microseconds and GB/s; ``source`` says where and how they were measured."""

    source: str
    copy_latency_us: float  # one page copy, fixed part
    copy_gbps: float  # page-sized copies from pinned host memory
    bulk_gbps: float  # one large contiguous copy (all_gpu's upload)
    layer_us: float  # one layer's compute at the attention budget
    head_us: float  # final norm + LM head, per step
    decode_us: float = 0.0  # the codec's decode of one page (0 without a codec)

    def copy_us(self, nbytes: int) -> float:
        return self.copy_latency_us + nbytes / (self.copy_gbps * 1e3)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        missing = [k for k in ("source", "copy_latency_us", "copy_gbps", "bulk_gbps", "layer_us", "head_us") if k not in d]
        if missing:
            raise OffloadError(f"calibration lacks {', '.join(missing)}")
        bad = [k for k, v in d.items() if k != "source" and (not isinstance(v, (int, float)) or v < 0 or v != v)]
        if bad or d["copy_gbps"] <= 0 or d["bulk_gbps"] <= 0:
            raise OffloadError(f"calibration values must be finite and non-negative, bandwidths positive: {bad or d}")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def simulate(events: list[LayerEvent], mode: str, cal: Calibration, *, layers: int, page_bytes: int,
             cache_bytes: int) -> dict:
    """Step end times (µs from "KV in host memory") for a plan; ``page_bytes``: bytes one page copy
    moves (the compressed payload with a codec); ``cache_bytes``: the whole cache (all_gpu's upload)."""
    if not events:
        raise OffloadError("simulate: the plan has no events")
    now = 0.0  # compute stream
    engine = 0.0  # copy engine: when it is next free
    ready: dict[tuple[int, int], float] = {}  # (layer, page) -> when its prefetch lands
    step_end: dict[int, float] = {}
    stall = 0.0
    if mode == "all_gpu":
        now = cache_bytes / (cal.bulk_gbps * 1e3)
    fetch_us = cal.copy_us(page_bytes) + cal.decode_us
    for ev in events:
        if ev.step > 0:
            waits = [ready[(ev.layer, p)] for p in ev.needed if (ev.layer, p) in ready]
            start = max([now, *waits])
            stall += start - now + len(ev.fetches) * fetch_us
            now = start + len(ev.fetches) * fetch_us + cal.layer_us
        for page, _slot in ev.prefetches:
            engine = max(engine, now) + cal.copy_us(page_bytes)
            ready[(ev.layer, page)] = engine + cal.decode_us
        if ev.step > 0 and ev.layer == layers - 1:
            now += cal.head_us
            step_end[ev.step] = now
    ends = np.array([step_end[s] for s in sorted(step_end)])
    return {"step_end_us": ends, "ttft_us": float(ends[0]), "tpot_us": np.diff(ends), "stall_us": stall}
