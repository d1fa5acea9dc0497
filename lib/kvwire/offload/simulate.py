"""A discrete-event SIMULATION of paged decode: the host thread that issues work, a compute stream
and a copy engine, timed from a calibration of measured numbers (host cost of issuing a layer or a
page copy, page-copy latency and bandwidth, per-layer and LM-head GPU time, a compressed page's
decode). It runs anywhere (CI has no GPU) and predicts what the GPU replay measures; every table and
figure that shows its numbers says "simulation".

It walks the replay's own issue order (``policy.issue_order``). Time 0 is "the KV is in host
memory". Nothing starts before the host has issued it. A layer waits for its in-flight prefetches,
copies its misses on the compute stream (the step stalls: latency + bytes / bandwidth each, plus
the codec's decode), then computes; its prefetches queue on the copy engine (FIFO) once the layer's
compute has read the slots they overwrite. With a codec, the first step's prefetches decode per
layer and later steps' in one batch at the step's end. ``all_gpu`` first uploads the whole cache.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import OffloadError
from .policy import LayerEvent, issue_order


@dataclass
class Calibration:
    """Measured costs, microseconds and GB/s; ``source`` says where and how they were measured."""

    source: str
    copy_latency_us: float  # one page copy on the GPU's copy engine, fixed part
    copy_gbps: float  # page-sized copies from pinned host memory
    bulk_gbps: float  # one large contiguous copy (all_gpu's upload)
    layer_us: float  # one layer's GPU time at the attention budget
    head_us: float  # final norm + LM head, per step
    decode_us: float = 0.0  # the codec's decode, per page (0 without a codec)
    decode_launch_us: float = 0.0  # the codec's decode, per kernel
    issue_layer_us: float = 0.0  # host time to issue a layer (meta copy + graph launch)
    issue_copy_us: float = 0.0  # host time to issue one page copy
    issue_decode_us: float = 0.0  # host time to issue one codec decode (kernel + scatter)
    issue_event_us: float = 0.0  # host time of one prefetch event beyond its copies (stream switch, events)

    def copy_us(self, nbytes: int) -> float:
        return self.copy_latency_us + nbytes / (self.copy_gbps * 1e3)

    def decode_batch_us(self, pages: int) -> float:
        return self.decode_launch_us + pages * self.decode_us if pages else 0.0

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
             cache_bytes: int, codec: bool = False) -> dict:
    """Step end times (µs from "KV in host memory") for a plan; ``page_bytes``: bytes one page copy
    moves (the compressed payload with a codec); ``cache_bytes``: the whole cache (all_gpu's upload)."""
    if not events:
        raise OffloadError("simulate: the plan has no events")
    host = 0.0  # when the host thread has issued everything so far
    now = 0.0  # compute stream
    engine = 0.0  # copy engine: when it is next free
    ready: dict[tuple[int, int], float] = {}  # (layer, page) -> when its prefetch is usable
    layer_end: dict[int, float] = {}
    batch: list[tuple[int, int]] = []
    step_end: dict[int, float] = {}
    host_end: dict[int, float] = {}  # when the host has issued each step (its head)
    stall = 0.0
    if mode == "all_gpu":
        now = cache_bytes / (cal.bulk_gbps * 1e3)
    for kind, ev in issue_order(events, layers):
        if kind == "compute":
            n = len(ev.fetches)
            host += cal.issue_layer_us + n * cal.issue_copy_us + (cal.issue_decode_us if codec and n else 0.0)
            free = max(now, host)
            start = max([free, *(ready[(ev.layer, p)] for p in ev.needed if (ev.layer, p) in ready)])
            fetch = n * cal.copy_us(page_bytes) + (cal.decode_batch_us(n) if codec else 0.0)
            stall += start - free + fetch
            now = start + fetch + cal.layer_us
            layer_end[ev.layer] = now
        elif kind == "prefetch":
            n = len(ev.prefetches)
            host += cal.issue_event_us + n * cal.issue_copy_us
            engine = max(engine, host, layer_end.get(ev.layer, 0.0) if ev.step > 0 else 0.0)
            for page, _slot in ev.prefetches:
                engine += cal.copy_us(page_bytes)
                ready[(ev.layer, page)] = engine
            if codec and ev.step == 0:
                host += cal.issue_decode_us if n else 0.0
                engine = max(engine, host) + cal.decode_batch_us(n)
                for page, _slot in ev.prefetches:
                    ready[(ev.layer, page)] = engine
            elif codec:
                batch += [(ev.layer, page) for page, _slot in ev.prefetches]
                for key in batch:
                    ready[key] = float("inf")  # usable only after the step's batch decode
        else:
            host += cal.issue_layer_us
            now = max(now, host) + cal.head_us
            step_end[ev.step] = now
            host_end.setdefault(ev.step, host)
            if batch:
                host += cal.issue_decode_us
                engine = max(engine, host) + cal.decode_batch_us(len(batch))
                for key in batch:
                    ready[key] = engine
                batch = []
    ends = np.array([step_end[s] for s in sorted(step_end)])
    return {"step_end_us": ends, "ttft_us": float(ends[0]), "tpot_us": np.diff(ends), "stall_us": stall,
            "host_first_us": host_end[min(host_end)]}
