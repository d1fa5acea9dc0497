"""Stage: summaries of the cached GPU timing tables (``results/timing/gpu/<gpu>.csv``, measured on lent
GPUs by the rule ``time_gpu``): kernel throughput per (GPU, codec, op), and break-even bandwidths per
(GPU, model shape, sequence length, dtype, codec) from the measured kernel times.

The GPU kernels encode a whole cache in one launch, so a per-layer time does not exist; the
pipelined break-even splits the cache's time evenly over its layers (all layers have one shape) and
says so in its ``per_layer_time`` column. A codec with a host stage (CacheGen's CPU rANS) adds the
host time to the device time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from ..errors import KVError
from ..io import write_csv
from ..transfer import break_even_gbps, cost_from_arrays

LARGE_BYTES = 64 * 2**20  # issue 5's "at >= 64 MB of KV"
SHAPE = ["gpu", "model", "layers", "kv_heads", "seq", "head_dim", "dtype", "codec"]


def read_gpu_tables(paths: Sequence[str | Path]) -> pd.DataFrame:
    """The GPU timing tables, concatenated; a table from before the ``conformant`` column counts its
    ``identical_to_cpu`` as conformance."""
    if not paths:
        raise KVError("no GPU timing tables (results/timing/gpu/*.csv): run the rule time_gpu on a GPU node")
    frames = []
    for p in paths:
        t = pd.read_csv(p)
        if "conformant" not in t.columns:
            t["conformant"] = pd.NA
        if "run" in t.columns or "checked_layers" in t.columns:  # rows merged from runs before the column
            old = t["checked_layers"].isna() & t["conformant"].isna() if "checked_layers" in t.columns else True
            t.loc[old, "conformant"] = t.loc[old, "identical_to_cpu"]
        else:
            t["conformant"] = t["identical_to_cpu"]
        frames.append(t)
    return pd.concat(frames, ignore_index=True)


def kernel_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (GPU, codec, op), over the shapes with at least 64 MB of KV: fraction of copy bandwidth
    (median, min, max), median GB/s, speed-up over eager (median, min), and conformance."""
    dev = table[(table.impl == "triton") & (table.raw_bytes >= LARGE_BYTES)]
    eager = table[(table.impl == "eager") & (table.raw_bytes >= LARGE_BYTES)]
    rows = []
    for (gpu, codec, op), g in dev.groupby(["gpu", "codec", "op"], sort=True):
        e = eager[(eager.gpu == gpu) & (eager.codec == codec) & (eager.op == op)]
        rows.append({
            "gpu": gpu, "copy_gbps": g.copy_gbps.iloc[0], "codec": codec, "op": op, "shapes": len(g),
            "frac_copy_median": g.frac_copy.median(), "frac_copy_min": g.frac_copy.min(),
            "frac_copy_max": g.frac_copy.max(), "gbps_median": g.gbps.median(),
            "speedup_vs_eager_median": g.speedup_vs_eager.median(), "speedup_vs_eager_min": g.speedup_vs_eager.min(),
            "eager_gbps_median": e.gbps.median() if len(e) else float("nan"),
            # empty = not checked at that size (a kernel that is not byte-exact, on layers too large for
            # the CPU codec); every checked shape must conform
            "conformant": bool(_checked(g.conformant).all()), "unchecked_shapes": int(g.conformant.isna().sum()),
            "ratio_median": g.ratio.median(),
        })
    return pd.DataFrame(rows)


def _checked(col: pd.Series) -> pd.Series:
    return col.dropna().map(lambda v: v if isinstance(v, bool) else str(v) == "True")


def break_even(table: pd.DataFrame) -> pd.DataFrame:
    """Break-even bandwidth (Gbps) of every timed (GPU, shape, dtype, codec): sequential and
    pipelined, from the Triton times (plus a host stage's, where there is one)."""
    rows = []
    timed = table[table.impl.isin(["triton", "host"])]
    for key, g in timed.groupby(SHAPE, sort=True):
        ms = g.groupby("op")["ms"].sum()  # triton + host where a host stage exists
        if not {"encode", "decode"} <= set(ms.index):
            continue
        base = dict(zip(SHAPE, key))
        n = int(base["layers"])
        raw, pay = int(g.raw_bytes.iloc[0]), int(g.payload_bytes.iloc[0])
        cost = cost_from_arrays(raw, [pay / n] * n, [ms["encode"] / 1e3 / n] * n, [ms["decode"] / 1e3 / n] * n)
        rows.append({**base, "raw_bytes": raw, "wire_bytes": pay, "ratio": raw / pay,
                     "encode_ms": ms["encode"], "decode_ms": ms["decode"],
                     "host_stage": bool((g.impl == "host").any()), "per_layer_time": "cache time / layers",
                     "break_even_gbps_sequential": break_even_gbps(cost, "sequential"),
                     "break_even_gbps_pipelined": break_even_gbps(cost, "pipelined")})
    return pd.DataFrame(rows)


def gpu_tables(paths: Sequence[str | Path], summary_csv: str | Path, break_even_csv: str | Path) -> None:
    table = read_gpu_tables(paths)
    write_csv(summary_csv, kernel_summary(table))
    write_csv(break_even_csv, break_even(table))
