"""Stage: the paged-offload study (docs/OFFLOAD.md).

``record_traces`` (CPU, per model): one long WikiText-2 document, its first ``context`` tokens per
configured context, a trace each (resumes: a valid trace already on disk is kept). ``gpu_study``
(GPU, trace-driven replay): every trace x mode, checked, timed, plus the calibration the simulation
uses. ``simulate_study`` (CPU): the same rows from the discrete-event simulation.
"""

from __future__ import annotations

import functools
import gc
import math
import statistics
import time
from pathlib import Path
from typing import Callable

import pandas as pd

from ..errors import OffloadError
from ..io import read_json, write_csv, write_json
from ..offload.experiment import (MODE_SPECS, OffloadSettings, largest_context, page_wire_bytes, plan_for,
                                  stall_columns, trace_row)
from ..offload.trace import AccessTrace

MANIFEST = "manifest.json"


def trace_path(out_dir: str | Path, context: int) -> Path:
    return Path(out_dir) / f"ctx{context}.npz"


def record_traces(model_dir: str | Path, name: str, dataset_spec: dict, settings: OffloadSettings,
                  out_dir: str | Path, *, seed: int, dtype: str = "bfloat16", log: Callable = print) -> dict:
    import torch

    from ..models import load_model
    from ..offload.trace import max_context, record_trace
    from ..prompts import build_documents, min_chars_for, uses_bos

    model, tok = load_model(model_dir, dtype=getattr(torch, dtype), device="cpu")
    contexts = settings.contexts_for(max_context(model, 0))
    need = max(contexts)
    docs = build_documents(dataset_spec, max_docs=1, min_chars=min_chars_for(need), seed=seed)
    ids = tok(docs[0]["text"], add_special_tokens=False)["input_ids"]
    if uses_bos(tok):
        ids = [tok.bos_token_id] + ids
    if len(ids) < need:
        raise OffloadError(f"{name}: document {docs[0]['id']} has {len(ids)} tokens, the longest context needs {need}")
    ids = torch.tensor(ids[:need])
    out_dir = Path(out_dir)
    entries = []
    for context in contexts:
        path = trace_path(out_dir, context)
        if path.is_file():
            try:
                tr = AccessTrace.load(path)
                if tr.context == context and tr.steps == settings.decode_tokens:
                    log(f"{name}: kept {path}")
                    entries.append({"context": context, "file": path.name})
                    continue
            except OffloadError as exc:
                log(f"{name}: re-recording {path}: {exc}")
        started = time.perf_counter()
        tr = record_trace(model, name, ids[:context], settings.decode_tokens, chunk=settings.chunk, progress=log)
        tr.save(path)
        log(f"{name}: context {context}: {time.perf_counter() - started:.1f} s")
        entries.append({"context": context, "file": path.name})
    manifest = {"model": name, "document": docs[0]["id"], "decode_tokens": settings.decode_tokens,
                "traces": entries}
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def load_traces(manifest_paths: list[str | Path]) -> list[AccessTrace]:
    traces = []
    for mp in manifest_paths:
        manifest = read_json(mp)
        for entry in manifest["traces"]:
            traces.append(AccessTrace.load(Path(mp).parent / entry["file"]))
    return traces


# ---- GPU replay ------------------------------------------------------------------------------------

def gpu_study(manifest_paths: list[str | Path], settings: OffloadSettings, out_csv: str | Path,
              calibration_json: str | Path, *, label: str, device: str = "cuda", log: Callable = print) -> pd.DataFrame:
    import torch

    from ..offload.replay import PagedDecoder, median_result

    if device == "cuda" and not torch.cuda.is_available():
        raise OffloadError("the GPU replay needs a CUDA device (the simulation runs on the CPU)")
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    rows = []
    calib: dict = {"gpu": label, "device": name, "models": {}}
    for trace in load_traces(manifest_paths):
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
                _calibrate(dec, trace, mode, codec, calib, row)
            del dec
    stall_columns(rows)
    frame = pd.DataFrame(rows)
    write_csv(out_csv, frame)
    write_json(calibration_json, calib)
    return frame


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


def _time_us(fn, device, n: int = 50) -> float:
    """Median µs of ``fn``: device time on a GPU (CUDA events), perf_counter on the CPU.

    On a GPU the stream is held busy while the host queues the ``n`` calls, so that the events time
    the device's work and not the host's rate of issuing it (which ``_host_us`` measures apart)."""
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


def _host_us(fn, n: int = 64) -> float:
    """Host-thread µs per call of ``fn`` (issue cost: the device work is not waited for)."""
    import torch

    times = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t) * 1e6 / n)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return statistics.median(times)


def _calibrate(dec, trace: AccessTrace, mode: str, codec, calib: dict, row: dict) -> None:
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
            times.append(_time_us(lambda: dst.copy_(src, non_blocking=nb), dev))
        n = len(sizes)
        mx, my = sum(sizes) / n, sum(times) / n
        slope = sum((x - mx) * (y - my) for x, y in zip(sizes, times)) / max(1e-30, sum((x - mx) ** 2 for x in sizes))
        pages = min(dec.pages, dec.slots, 64)
        dsts = [dec.pool[0, i] for i in range(pages)]
        srcs = [dec.host[0, i] for i in range(pages)]
        # on the CPU the "issue" is the copy itself (already in the copy line): no separate host cost
        issue = _host_us(lambda: dec._copy_many(dsts, srcs), n=16) / pages if nb else 0.0
        event = 0.0
        if nb:  # a prefetch event as the replay issues it: wait, switch to the copy stream, copy, record
            copier, after = torch.cuda.Stream(dev), torch.cuda.Event()
            after.record()

            def prefetch_event():
                copier.wait_event(after)
                with torch.cuda.stream(copier):
                    dec._copy_many(dsts[:1], srcs[:1])
                torch.cuda.Event().record(copier)

            event = max(0.0, _host_us(prefetch_event) - issue)
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

        up = _time_us(dec._upload_all, dev, n=3)
        entry.setdefault("contexts", {})[str(trace.context)] = {
            "head_us": _time_us(dec.run_head, dev), "layer_us": _time_us(layer, dev),
            "issue_layer_us": _host_us(layer) if nb else 0.0, "bulk_gbps": dec.host.numel() * 2 / (up * 1e3),
            "tpot_us": row["tpot_p50_ms"] * 1e3}
    if codec:  # what the replay runs: one decode kernel + its scatter into the pool (after the check)
        def decode_call(n):
            index = torch.arange(n, device=dev)
            return lambda: dec._decode_into(n, "batch", index, flat=True)

        n = min(33, dec.stage["batch"].shape[0])  # the staging buffer holds one step's prefetches
        reps = 50 if nb else 2  # on the CPU the decode runs in Triton's interpreter: slow, and timed only for tests
        one, many = _time_us(decode_call(1), dev, n=reps), _time_us(decode_call(n), dev, n=reps)
        entry["decode_us"] = max(0.0, (many - one) / (n - 1)) if n > 1 else 0.0
        entry["decode_launch_us"] = max(0.0, one - entry["decode_us"])
        entry["issue_decode_us"] = _host_us(decode_call(1)) if nb else 0.0


# ---- simulation ------------------------------------------------------------------------------------

def simulate_study(manifest_paths: list[str | Path], settings: OffloadSettings, calibration_json: str | Path,
                   out_csv: str | Path, *, log: Callable = print) -> pd.DataFrame:
    from ..offload.simulate import Calibration, simulate

    calib = read_json(calibration_json)
    rows = []
    for trace in load_traces(manifest_paths):
        entry = calib.get("models", {}).get(trace.model, {})
        costs = entry.get("contexts", {}).get(str(trace.context))
        if not costs or "copy" not in calib:
            raise OffloadError(f"calibration {calibration_json} has no measured costs for {trace.model!r} at "
                               f"context {trace.context} (rerun the GPU replay with this config)")
        s = settings
        for mode in s.modes:
            events, policy, codec, slots = plan_for(trace, mode, s)
            if codec and "decode_us" not in entry:
                raise OffloadError(f"calibration {calibration_json} has no {codec} decode cost for {trace.model!r}")
            cal = Calibration.from_dict({
                "source": f"simulation calibrated on {calib.get('device', calib.get('gpu'))}",
                "copy_latency_us": calib["copy"]["latency_us"], "copy_gbps": calib["copy"]["gbps"],
                "bulk_gbps": costs["bulk_gbps"], "layer_us": costs["layer_us"], "head_us": costs["head_us"],
                "issue_layer_us": costs.get("issue_layer_us", 0.0), "issue_copy_us": calib["copy"].get("issue_us", 0.0),
                "issue_event_us": calib["copy"].get("issue_event_us", 0.0),
                "decode_us": entry.get("decode_us", 0.0) if codec else 0.0,
                "decode_launch_us": entry.get("decode_launch_us", 0.0) if codec else 0.0,
                "issue_decode_us": entry.get("issue_decode_us", 0.0) if codec else 0.0})
            wire = page_wire_bytes(trace.shape, s.page_size, codec)
            raw = page_wire_bytes(trace.shape, s.page_size, None)
            cache_bytes = trace.prefix_pages(s.page_size) * raw * trace.layers
            sim = simulate(events, policy, cal, layers=trace.layers, page_bytes=wire, cache_bytes=cache_bytes,
                           codec=codec is not None)
            row = trace_row(trace, mode, s, events)
            tpot = sim["tpot_us"] / 1e3
            row.update({"ttft_ms": sim["ttft_us"] / 1e3, "ttft_host_ms": sim["host_first_us"] / 1e3,
                        "tpot_p50_ms": float(pd.Series(tpot).quantile(0.5)),
                        "tpot_p99_ms": float(pd.Series(tpot).quantile(0.99)),
                        "decode_ms": float(sim["step_end_us"][-1] - sim["step_end_us"][0]) / 1e3,
                        "wire_bytes_per_page": wire,
                        "largest_context": largest_context(trace.shape, policy, s, compression=raw / wire),
                        "source": cal.source})
            row["throughput_tok_s"] = 1e3 / row["tpot_p50_ms"]
            rows.append(row)
    stall_columns(rows)
    frame = pd.DataFrame(rows)
    write_csv(out_csv, frame)
    log(f"simulated {len(rows)} runs -> {out_csv}")
    return frame


# ---- summary table ---------------------------------------------------------------------------------

TABLE_KEY = ["model", "context", "mode"]


def offload_table(gpu_csv: str | Path, sim_csv: str | Path, out_csv: str | Path) -> pd.DataFrame:
    """Replay rows and simulation rows side by side (``kind``: "replay" | "simulation"); every
    simulation row carries its relative TPOT / TTFT error against the replay of the same run."""
    replay = pd.read_csv(gpu_csv).assign(kind="replay")
    sim = pd.read_csv(sim_csv).assign(kind="simulation")
    for name, frame in (("GPU replay", replay), ("simulation", sim)):
        missing = [c for c in TABLE_KEY + ["tpot_p50_ms", "ttft_ms"] if c not in frame.columns]
        if missing:
            raise OffloadError(f"{name} table lacks columns {missing}")
    ref = replay.set_index(TABLE_KEY)
    idx = sim.set_index(TABLE_KEY).index
    errors = {"tpot_p50_ms": "sim_error_tpot", "ttft_ms": "sim_error_ttft", "ttft_host_ms": "sim_error_ttft_host"}
    for col, name in errors.items():
        if col in ref.columns and col in sim.columns:  # ttft_host_ms: GPU runs from version 3 on
            measured = ref[col].reindex(idx).to_numpy()
            sim[name] = sim[col].to_numpy() / measured - 1
    frame = pd.concat([replay, sim], ignore_index=True, sort=False)
    frame = frame.sort_values(["kind", "model", "context", "mode"], kind="stable").reset_index(drop=True)
    write_csv(out_csv, frame)
    return frame
