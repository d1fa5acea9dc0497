"""Merge GPU timing tables of several device runs into one cached table (results/timing/gpu/<gpu>.csv).

A device call has a 10-minute limit and a session 30 minutes of device time, so one GPU's table is
measured in slices. Each input is labelled with its run; where two runs timed the same (model, seq,
dtype, codec, impl, op), the later run's row wins (inputs are given oldest first).

    python bench/merge_gpu_tables.py --out results/timing/gpu/h200.csv \
        old.csv=2026-12-01/v2 new.csv=2026-12-02/v3 ...

An input given without =RUN_LABEL keeps its own run column (re-merging the cached table into a new run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

import pandas as pd  # noqa: E402

from kvwire.io import write_csv  # noqa: E402

KEY = ["gpu", "model", "seq", "dtype", "codec", "impl", "op"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("tables", nargs="+", help="CSV=RUN_LABEL, oldest first")
    args = ap.parse_args()
    frames = []
    for order, spec in enumerate(args.tables):
        path, _, label = spec.partition("=")
        t = pd.read_csv(path)
        if "run" not in t.columns:
            t["run"] = label or Path(path).stem
        elif label:
            t["run"] = label
        t["_order"] = order
        frames.append(t)
    merged = pd.concat(frames, ignore_index=True).sort_values("_order", kind="stable")
    merged = merged.drop_duplicates(KEY, keep="last").drop(columns="_order")
    merged = merged.sort_values(["model", "seq", "dtype", "codec", "impl", "op"], kind="stable")
    write_csv(args.out, merged)
    print(f"{len(merged)} rows from {len(frames)} tables -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
