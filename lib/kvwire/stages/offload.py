"""Stage: the paged-offload study (docs/OFFLOAD.md).

``record_traces`` (CPU, per model): one long WikiText-2 document, its first ``context`` tokens per
configured context, a trace each (resumes: a valid trace already on disk is kept). ``gpu_study``
(GPU, trace-driven replay): every trace x mode, checked, timed, plus the calibration the simulation
uses. ``simulate_study`` (CPU): the same rows from the discrete-event simulation.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Mapping

import pandas as pd

from ..errors import OffloadError
from ..io import read_json, write_csv, write_json
from ..offload.experiment import (MODE_SPECS, OffloadSettings, largest_context, page_wire_bytes, plan_for,
                                  stall_columns, trace_row)
from ..offload.trace import AccessTrace

MANIFEST = "manifest.json"


def as_settings(settings: OffloadSettings | Mapping) -> OffloadSettings:
    """The study's settings, from the config's ``offload`` section where a mapping is given."""
    return settings if isinstance(settings, OffloadSettings) else OffloadSettings.from_config(settings)


def trace_path(out_dir: str | Path, context: int) -> Path:
    return Path(out_dir) / f"ctx{context}.npz"


def record_traces(model_dir: str | Path, name: str, dataset_spec: dict, settings: OffloadSettings | Mapping,
                  out_dir: str | Path, *, seed: int, dtype: str = "bfloat16", log: Callable = print) -> dict:
    import torch

    from ..models import load_model
    from ..offload.trace import max_context, record_trace
    from ..prompts import build_documents, min_chars_for, uses_bos

    settings = as_settings(settings)

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

def gpu_study(manifest_paths: list[str | Path], settings: OffloadSettings | Mapping, out_csv: str | Path,
              calibration_json: str | Path, *, label: str, device: str = "cuda", log: Callable = print) -> pd.DataFrame:
    """Every trace x mode replayed on ``device`` (``offload.calibration.replay_study``): the rows and
    the calibration the simulation uses, written."""
    from ..offload.calibration import replay_study

    rows, calib = replay_study(load_traces(manifest_paths), as_settings(settings), label=label, device=device, log=log)
    stall_columns(rows)
    frame = pd.DataFrame(rows)
    write_csv(out_csv, frame)
    write_json(calibration_json, calib)
    return frame


# ---- simulation ------------------------------------------------------------------------------------

def simulate_study(manifest_paths: list[str | Path], settings: OffloadSettings | Mapping, calibration_json: str | Path,
                   out_csv: str | Path, *, log: Callable = print) -> pd.DataFrame:
    from ..offload.simulate import Calibration, simulate

    settings = as_settings(settings)

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
