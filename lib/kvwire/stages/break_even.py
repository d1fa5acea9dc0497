"""Stage: one break-even table over every (model shape, sequence length, codec, device), and the
GPU's speed-up curves.

- **CPU rows** come from the study's measured CPU codec timings (``break_even.csv``: per-layer
  encode and decode times of real caches, median over datasets).
- **GPU rows** come from the cached kernel timings (``gpu_break_even.csv``, rule ``gpu_tables``:
  whole-cache times, split over the layers by the tokens each sends -- evenly where all layers are
  equal; a sliding-window layer sends ``min(seq, window - 1)``, ``kvwire.windows``).

Both are solved continuously by ``transfer.break_even_gbps``. A GPU shape with the study model's
(layers, kv heads, head dim) carries that model's name, so the two devices line up row for row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from ..errors import KVError
from ..io import write_csv
from ..transfer import CodecCost, sweep

COLUMNS = ["device", "device_name", "threads", "timer", "model", "shape", "layers", "kv_heads", "head_dim", "seq", "dtype",
           "codec", "raw_bytes", "wire_bytes", "ratio", "encode_ms", "decode_ms", "break_even_gbps_sequential",
           "break_even_gbps_pipelined", "prefill_stats_ms", "break_even_gbps_sequential_with_stats",
           "break_even_gbps_pipelined_with_stats", "per_layer_time", "source"]
MODES = ("sequential", "pipelined")


def _study_shapes(models: pd.DataFrame) -> dict[tuple[int, int, int], str]:
    return {(int(r.num_layers), int(r.num_kv_heads), int(r.head_dim)): r["name"] for _, r in models.iterrows()}


def cpu_rows(cpu_break_even: pd.DataFrame, models: pd.DataFrame, *, dtype: str) -> pd.DataFrame:
    """The study's CPU break-evens, one row per (model, bin, codec): the median over datasets."""
    facts = models.set_index("name")
    missing = sorted(set(cpu_break_even["model"]) - set(facts.index))
    if missing:
        raise KVError(f"break_even.csv has models that models.csv does not describe: {missing}")
    num = ["raw_bytes", "wire_bytes", "ratio", "encode_s", "decode_s",
           "break_even_gbps_sequential", "break_even_gbps_pipelined"]
    cpu = cpu_break_even
    if "threads" not in cpu.columns:  # timing tables before the column: unknown, empty
        cpu = cpu.assign(threads=pd.NA)
    if "timer" not in cpu.columns:  # timing tables before the pass timer: per-layer medians
        cpu = cpu.assign(timer="layer")
    if "prefill_stats_s" not in cpu.columns:  # before the selection cost was measured: unknown
        cpu = cpu.assign(prefill_stats_s=float("nan"), **{f"break_even_gbps_{m}_with_stats": float("nan") for m in MODES})
    num += ["prefill_stats_s"] + [f"break_even_gbps_{m}_with_stats" for m in MODES]
    t = cpu.groupby(["model", "bin", "codec", "device_name", "threads", "timer"], as_index=False, dropna=False)[num].median()
    out = pd.DataFrame({
        "device": "cpu", "device_name": t["device_name"], "threads": t["threads"], "timer": t["timer"], "model": t["model"],
        "shape": t["model"],
        "layers": t["model"].map(facts["num_layers"]), "kv_heads": t["model"].map(facts["num_kv_heads"]),
        "head_dim": t["model"].map(facts["head_dim"]), "seq": t["bin"], "dtype": dtype, "codec": t["codec"],
        "raw_bytes": t["raw_bytes"], "wire_bytes": t["wire_bytes"], "ratio": t["ratio"],
        "encode_ms": t["encode_s"] * 1e3, "decode_ms": t["decode_s"] * 1e3,
        "break_even_gbps_sequential": t["break_even_gbps_sequential"],
        "break_even_gbps_pipelined": t["break_even_gbps_pipelined"],
        # what a token-selection codec pays to compute its attention statistics, charged to its encode
        "prefill_stats_ms": t["prefill_stats_s"] * 1e3,
        "break_even_gbps_sequential_with_stats": t["break_even_gbps_sequential_with_stats"],
        "break_even_gbps_pipelined_with_stats": t["break_even_gbps_pipelined_with_stats"],
        "per_layer_time": "measured per layer", "source": "break_even.csv (median over datasets)"})
    return out[COLUMNS]


def gpu_rows(gpu_break_even: pd.DataFrame, models: pd.DataFrame) -> pd.DataFrame:
    """The GPU break-evens; shapes of a study model take its name (``shape`` keeps the GPU table's)."""
    shapes = _study_shapes(models)
    g = gpu_break_even
    study = [shapes.get((int(a), int(b), int(c))) for a, b, c in zip(g.layers, g.kv_heads, g.head_dim)]
    # the GPU kernels read statistics handed over by the prefill: their cost is not timed there
    out = g.assign(device="gpu", device_name=g["gpu"], threads=pd.NA, timer="cuda events", shape=g["model"],
                   prefill_stats_ms=float("nan"), **{f"break_even_gbps_{m}_with_stats": float("nan") for m in MODES},
                   model=[s or m for s, m in zip(study, g["model"])], source="gpu_break_even.csv")
    return out[COLUMNS]


def unified_break_even(cpu_break_even: pd.DataFrame, models: pd.DataFrame, gpu_break_even: pd.DataFrame,
                       *, cpu_dtype: str = "bfloat16") -> pd.DataFrame:
    table = pd.concat([cpu_rows(cpu_break_even, models, dtype=cpu_dtype), gpu_rows(gpu_break_even, models)],
                      ignore_index=True)
    return table.sort_values(["model", "seq", "codec", "device", "dtype"], kind="stable").reset_index(drop=True)


def gpu_sweep(gpu_break_even: pd.DataFrame, models: pd.DataFrame, bandwidths_gbps: Sequence[float], *,
              dtype: str = "bfloat16") -> pd.DataFrame:
    """Speed-up over raw transfer at every bandwidth of every GPU row of ``dtype`` (both modes), from
    the same split of the cache's kernel time over its layers as its break-even (by layer tokens:
    even where every layer keeps the same tokens)."""
    if not len(bandwidths_gbps):
        raise KVError("the GPU speed-up sweep needs at least one bandwidth (transfer.gpu_bandwidths_gbps)")
    from .gpu_tables import sent_tokens

    g = gpu_rows(gpu_break_even[gpu_break_even["dtype"] == dtype], models)
    rows = []
    for r in g.itertuples(index=False):
        # split by layer tokens as gpu_break_even's own break-evens (a sliding-window layer sends fewer)
        cost = CodecCost.uniform(int(r.raw_bytes), r.wire_bytes, r.encode_ms / 1e3, r.decode_ms / 1e3,
                                 sent_tokens(r.shape, int(r.layers), int(r.seq)))
        for s in sweep(cost, bandwidths_gbps):
            rows.append({"device": "gpu", "device_name": r.device_name, "model": r.model, "shape": r.shape,
                         "seq": int(r.seq), "dtype": dtype, "codec": r.codec, "ratio": r.ratio, **s})
    return pd.DataFrame(rows)


def break_even_all(cpu_csv: str | Path, models_csv: str | Path, gpu_csv: str | Path, bandwidths_gbps,
                   out_csv: str | Path, sweep_csv: str | Path, *, cpu_dtype: str = "bfloat16") -> pd.DataFrame:
    cpu, models, gpu = pd.read_csv(cpu_csv), pd.read_csv(models_csv), pd.read_csv(gpu_csv)
    table = unified_break_even(cpu, models, gpu, cpu_dtype=cpu_dtype)
    write_csv(out_csv, table)
    write_csv(sweep_csv, gpu_sweep(gpu, models, bandwidths_gbps))
    return table
