"""Stage: CPU codec times at several thread counts on one host (issue 27).

``time_scaling`` times every codec's whole-cache encode and decode on real KV files at each thread
count, with the same per-layer timer as ``time_cpu`` (``kvwire.timing.time_codec_cpu``), so a row at
the study's thread count is directly comparable with its break-even table. ``scaling_table`` turns
the raw rows of one or more hosts into the study's table: throughput, speed-up over one thread and
parallel efficiency, with the CPU model and its logical core count beside every time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch

from ..codecs import build
from ..errors import KVError
from ..io import write_csv
from ..kv import load_kv
from ..timing import time_codec_cpu
from .runtime import cpu_model

RAW_COLUMNS = ["device_name", "logical_cpus", "omp_wait_policy", "threads", "model", "seq", "layers", "codec",
               "raw_bytes", "wire_bytes", "encode_s", "decode_s", "run", "timer"]


def check_threads(threads: Sequence[int], available: int | None = None) -> list[int]:
    """Thread counts as asked, validated: positive, distinct, none above the host's logical CPUs (a
    time taken with more threads than cores measures oversubscription, not scaling)."""
    available = available or os.cpu_count() or 1
    out = []
    for t in threads:
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise KVError(f"thread count {t!r} is not a positive integer")
        if t > available:
            raise KVError(f"thread count {t} exceeds this host's {available} logical CPUs")
        if t in out:
            raise KVError(f"thread count {t} is listed twice")
        out.append(t)
    if not out:
        raise KVError("no thread counts to time")
    return out


def time_scaling(kv_paths: Sequence[str | Path], codecs: Mapping[str, tuple[str, dict]], threads: Sequence[int], *,
                 repeats: int = 3, warmup: int = 1, run: str = "", timer: str = "pass",
                 progress: Callable[[str], None] = print) -> pd.DataFrame:
    """One row per (thread count, cache, codec): whole-cache encode/decode seconds (``timer``: the
    timer of ``time_cpu``, see ``kvwire.timing``) and the container's bytes. ``codecs`` maps a codec
    id to (name, params)."""
    threads = check_threads(list(threads))
    if not kv_paths:
        raise KVError("no KV files to time")
    if not codecs:
        raise KVError("no codecs to time")
    built = {cid: build(name, params) for cid, (name, params) in codecs.items()}  # unknown codec: fails first
    records = [(Path(p), load_kv(p)) for p in kv_paths]
    before = torch.get_num_threads()
    rows = []
    try:
        for t in threads:
            torch.set_num_threads(t)
            for path, rec in records:
                for cid, codec in built.items():
                    cost, _ = time_codec_cpu(codec, rec.layers, repeats=repeats, warmup=warmup,
                                             stats=rec.stats or None, timer=timer)
                    rows.append({
                        "device_name": cpu_model(), "logical_cpus": os.cpu_count(),
                        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""), "threads": torch.get_num_threads(),
                        "model": rec.meta.get("model", path.parent.parent.parent.name), "seq": rec.seq_len,
                        "layers": len(rec.layers), "codec": cid, "raw_bytes": cost.raw_bytes,
                        "wire_bytes": cost.total_wire_bytes, "encode_s": sum(cost.encode_s),
                        "decode_s": sum(cost.decode_s), "run": run, "timer": timer,
                    })
                    progress(f"{t:>2} threads {rows[-1]['model']} {cid}: encode {rows[-1]['encode_s'] * 1e3:.1f} ms, "
                             f"decode {rows[-1]['decode_s'] * 1e3:.1f} ms")
    finally:
        torch.set_num_threads(before)
    return pd.DataFrame(rows, columns=RAW_COLUMNS)


def read_scaling(paths: Sequence[str | Path]) -> pd.DataFrame:
    """The cached raw tables of ``time_scaling`` (one per host), checked for the columns they need."""
    frames = []
    for p in paths:
        try:
            t = pd.read_csv(p)
        except (OSError, ValueError) as e:
            raise KVError(f"CPU scaling table {p}: unreadable ({e})") from None
        if "timer" not in t.columns:  # tables from before the pass timer: per-layer medians
            t["timer"] = "layer"
        missing = [c for c in RAW_COLUMNS if c not in t.columns]
        if missing:
            raise KVError(f"CPU scaling table {p}: missing columns {missing}")
        bad = t[(t.encode_s <= 0) | (t.decode_s <= 0) | (t.threads < 1) | (t.raw_bytes <= 0)]
        if len(bad):
            raise KVError(f"CPU scaling table {p}: {len(bad)} row(s) with a non-positive time, thread count or size")
        frames.append(t)
    if not frames:
        raise KVError("no CPU scaling tables")
    return pd.concat(frames, ignore_index=True)


def scaling_table(raw: pd.DataFrame) -> pd.DataFrame:
    """Per host, cache and codec at each thread count: MB/s of raw KV both ways, speed-up over the
    same host's one-thread time and parallel efficiency (speed-up / threads); ``whole_cpu`` marks the
    host's largest thread count and ``fastest`` the thread count with the least encode + decode time
    (what a CPU-vs-GPU comparison should use, stated)."""
    key = ["device_name", "logical_cpus", "timer", "model", "seq", "codec"]
    raw = raw.assign(timer=raw["timer"] if "timer" in raw.columns else "layer")
    t = raw.groupby(key + ["threads"], as_index=False).agg(
        layers=("layers", "first"), raw_bytes=("raw_bytes", "first"), wire_bytes=("wire_bytes", "first"),
        encode_s=("encode_s", "median"), decode_s=("decode_s", "median"), omp_wait_policy=("omp_wait_policy", "first"))
    t["encode_mbps"] = t.raw_bytes / t.encode_s / 1e6
    t["decode_mbps"] = t.raw_bytes / t.decode_s / 1e6
    one = t[t.threads == 1][key + ["encode_s", "decode_s"]].rename(columns={"encode_s": "encode_s_1",
                                                                          "decode_s": "decode_s_1"})
    joined = t[key].merge(one, on=key, how="left")  # keeps t's row order
    t["encode_speedup"] = joined.encode_s_1 / t.encode_s
    t["decode_speedup"] = joined.decode_s_1 / t.decode_s
    t["encode_efficiency"] = t.encode_speedup / t.threads
    t["decode_efficiency"] = t.decode_speedup / t.threads
    t["whole_cpu"] = t.threads == t.groupby(["device_name", "timer"]).threads.transform("max")
    # more threads are not always faster on caches of a few MB (per-layer ops are short): the thread
    # count with the least encode + decode time, per host, cache and codec
    both = t.encode_s + t.decode_s
    t["fastest"] = both == both.groupby([t[k] for k in key]).transform("min")
    return t.sort_values(key + ["threads"], kind="stable").reset_index(drop=True)


def cpu_scaling(paths: Sequence[str | Path], out_csv: str | Path) -> pd.DataFrame:
    table = scaling_table(read_scaling(paths))
    write_csv(out_csv, table)
    return table
