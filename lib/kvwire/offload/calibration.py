"""The GPU replay of the offload study and the costs it measures for the simulation: page-copy latency
and bandwidth, the host's cost of issuing copies, layers and decodes, per-layer GPU time, the LM head,
the bulk upload and a codec's decode per page (``calibrate``), with device-time and host-time timers."""

from __future__ import annotations

import functools
import gc
import math
import statistics
import time
from typing import Callable, Sequence

from ..errors import OffloadError
from ..kernels.launch import host_us
from .experiment import OffloadSettings, largest_context, plan_for, trace_row
from .trace import AccessTrace


def replay_study(traces: Sequence[AccessTrace], settings: OffloadSettings, *, label: str, device: str = "cuda",
                 log: Callable = print) -> tuple[list[dict], dict]:
    """Every trace x mode replayed on ``device``, checked and timed: (rows, calibration)."""
    import torch

    from .replay import PagedDecoder, median_result

    if device == "cuda" and not torch.cuda.is_available():
        raise OffloadError("the GPU replay needs a CUDA device (the simulation runs on the CPU)")
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    rows = []
    calib: dict = {"gpu": label, "device": name, "models": {}}
    for trace in traces:
        s = settings
        for mode in s.modes:
            events, policy, codec, slots = plan_for(trace, mode, s)
            tail_start = trace.context % s.page_size
            base = 0
            if device == "cuda":  # this configuration's own peak: weights, store staging, pool, graphs
                gc.collect()  # the previous decoder sits in reference cycles (CUDA graphs, hooks)
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            dec = PagedDecoder(trace.shape, prefix_pages=trace.prefix_pages(s.page_size), page_size=s.page_size,
                               slots=slots, k=s.k, tail_cap=tail_start + trace.steps, tail_start=tail_start,
                               device=device, codec=codec, seed=trace.context)
            dec.prepare(events, policy)
            dec.run()  # warm-up: first-touch of pinned pages, kernels, graphs
            results = [dec.run() for _ in range(s.repeats)]
            err = dec.check_pool()
            row = trace_row(trace, mode, s, events)
            row.update(median_result(results))
            if device == "cuda":
                row["peak_gpu_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
            row["wire_bytes_per_page"] = dec.wire_bytes_per_page()
            row["pool_check_max_abs_err"] = err
            row["largest_context"] = largest_context(trace.shape, policy, s, compression=(
                dec.page_bytes / dec.wire_bytes_per_page()))
            row["throughput_tok_s"] = 1e3 / row["tpot_p50_ms"]
            row["source"] = f"trace-driven replay on {name}"
            rows.append(row)
            log(f"{trace.model} ctx {trace.context} {mode}: ttft {row['ttft_ms']:.3f} ms, tpot p50 "
                f"{row['tpot_p50_ms']:.4f} ms, hit rate {row['hit_rate']:.3f}, check err {err:.3g}")
            if mode == "all_gpu" or "copy" not in calib or (codec and "decode_us" not in calib["models"].get(trace.model, {})):
                calibrate(dec, trace, mode, codec, calib, row)
            del dec
    return rows, calib


@functools.cache
def _sleep_cycles_per_us() -> float:
    import torch

    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(1000)  # first launch outside the timing
    a.record()
    torch.cuda._sleep(10**6)
    b.record()
    torch.cuda.synchronize()
    return 10**6 / (a.elapsed_time(b) * 1e3)


def _gpu_hold(us: float) -> None:
    """Keep the current stream busy for about ``us`` µs (``torch.cuda._sleep``)."""
    import torch

    torch.cuda._sleep(int(us * _sleep_cycles_per_us()))


def time_us(fn, device, n: int = 50) -> float:
    """Median µs of ``fn``: device time on a GPU (CUDA events), perf_counter on the CPU.

    On a GPU the stream is held busy while the host queues the ``n`` calls, so that the events time
    the device's work and not the host's rate of issuing it (which ``host_us`` measures apart)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        issue_us = (time.perf_counter() - t) * 1e6  # an upper bound of issuing n calls (the queue may block)
        torch.cuda.synchronize()
        times = []
        for _ in range(5):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            _gpu_hold(2 * issue_us + 200)
            a.record()
            for _ in range(n):
                fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b) * 1e3 / n)
        return statistics.median(times)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t) * 1e6 / n)
    return statistics.median(times)


def calibrate(dec, trace: AccessTrace, mode: str, codec, calib: dict, row: dict) -> None:
    """Measured costs for the simulation: page-copy latency and bandwidth (a least-squares line over
    copy sizes) and the host's cost of issuing one; per layer: GPU time and issue cost, the LM head,
    the bulk upload; a codec's decode per page and per kernel."""
    import torch

    dev = dec.device
    nb = dev.type == "cuda"
    entry = calib["models"].setdefault(trace.model, {})
    if "copy" not in calib:
        sizes, times = [], []
        for pages in (1, 4, 16):
            src, dst = dec.host[0, :pages], dec.pool[0, :pages]
            if dst.shape[0] < pages:
                continue
            sizes.append(src.numel() * 2)
            times.append(time_us(lambda: dst.copy_(src, non_blocking=nb), dev))
        n = len(sizes)
        mx, my = sum(sizes) / n, sum(times) / n
        slope = sum((x - mx) * (y - my) for x, y in zip(sizes, times)) / max(1e-30, sum((x - mx) ** 2 for x in sizes))
        pages = min(dec.pages, dec.slots, 64)
        dsts = [dec.pool[0, i] for i in range(pages)]
        srcs = [dec.host[0, i] for i in range(pages)]
        # on the CPU the "issue" is the copy itself (already in the copy line): no separate host cost
        issue = host_us(lambda: dec._copy_many(dsts, srcs), calls=16) / pages if nb else 0.0
        event = 0.0
        if nb:  # a prefetch event as the replay issues it: wait, switch to the copy stream, copy, record
            copier, after = torch.cuda.Stream(dev), torch.cuda.Event()
            after.record()

            def prefetch_event():
                copier.wait_event(after)
                with torch.cuda.stream(copier):
                    dec._copy_many(dsts[:1], srcs[:1])
                torch.cuda.Event().record(copier)

            event = max(0.0, host_us(prefetch_event) - issue)
        calib["copy"] = {"sizes": sizes, "times_us": times, "latency_us": max(0.0, my - slope * mx),
                         "gbps": 1e-3 / slope if slope > 0 else math.inf, "issue_us": issue, "issue_event_us": event}
    if mode == "all_gpu":  # per context: the cache's size sets the upload; layer costs are measured again
        mark = torch.cuda.Event() if nb else None

        def layer():  # as the replay issues a layer: wait for its pages, meta, graph, record it done
            if mark is not None:
                torch.cuda.current_stream(dev).wait_event(mark)
            dec.meta[0].copy_(dec.metas[1, 0], non_blocking=nb)
            dec.run_layer(0)
            if mark is not None:
                mark.record()

        up = time_us(dec._upload_all, dev, n=3)
        entry.setdefault("contexts", {})[str(trace.context)] = {
            "head_us": time_us(dec.run_head, dev), "layer_us": time_us(layer, dev),
            "issue_layer_us": host_us(layer) if nb else 0.0, "bulk_gbps": dec.host.numel() * 2 / (up * 1e3),
            "tpot_us": row["tpot_p50_ms"] * 1e3}
    if codec:  # what the replay runs: one decode kernel + its scatter into the pool (after the check)
        def decode_call(n):
            index = torch.arange(n, device=dev)
            return lambda: dec._decode_into(n, "batch", index, flat=True)

        n = min(33, dec.stage["batch"].shape[0])  # the staging buffer holds one step's prefetches
        reps = 50 if nb else 2  # on the CPU the decode runs in Triton's interpreter: slow, and timed only for tests
        one, many = time_us(decode_call(1), dev, n=reps), time_us(decode_call(n), dev, n=reps)
        entry["decode_us"] = max(0.0, (many - one) / (n - 1)) if n > 1 else 0.0
        entry["decode_launch_us"] = max(0.0, one - entry["decode_us"])
        entry["issue_decode_us"] = host_us(decode_call(1)) if nb else 0.0


