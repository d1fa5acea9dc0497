"""Fit kvwire.resources.MEM_FIT to measured peaks: for every job of one or more finished runs
(their results/tables/resources.csv), the peak the memory model estimates from the model's shape
and the job's tokens, against the exact peak RSS the job logged; per rule, the line
peak = base + slope * estimate through the upper envelope of the points (the largest peak at each
estimate), then what the declared mem_mb (with MARGIN) leaves as headroom on every job.

    python bench/fit_memory.py RUN_DIR:CONFIG [RUN_DIR:CONFIG ...]

RUN_DIR is a working directory of a finished run (with resources/models/*/facts.json and
results/tables/resources.csv), CONFIG the config it ran with (merged files joined by commas).
docs/OPERATIONS.md#memory has the output of the runs behind the committed fit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from kvwire.resources import MARGIN, MEM_FIT, job_mem_mb, model_shape, peak_estimate_mb  # noqa: E402

RULE_OF = {"models": "fetch_model", "extract": "extract_kv", "reference": "reference", "quality": "quality",
           "encode": "encode", "timing": "time_cpu", "kvstats": "kv_statistics", "offload": "offload_trace",
           "router": "router"}


def load_config(spec: str) -> dict:
    from snakemake.utils import update_config

    cfg: dict = {}
    for name in spec.split(","):
        update_config(cfg, yaml.safe_load(Path(name).read_text()))
    return cfg


def work_of(rule: str, job: str, cfg: dict) -> tuple[str | None, dict]:
    """(model, work keyword arguments) of a job, as common.smk sizes it."""
    parts = job.split("/")
    bins = [int(b) for b in cfg["prompts"]["bins"]]
    if rule == "fetch_model":
        return parts[1], {}
    if rule == "extract_kv":
        ex = cfg.get("extract", {})
        return parts[1], {"tokens": int(parts[3]), "batch": ex.get("batch_size", 4),
                          "attention": bool(ex.get("attention_stats"))}
    if rule in ("reference", "quality"):
        return parts[1], {"tokens": max(bins), "batch": cfg.get("quality", {}).get("batch_size", 8),
                          "continuation": cfg["prompts"]["continuation"]}
    if rule in ("encode", "kv_statistics"):
        return parts[1], {"tokens": max(bins)}
    if rule == "time_cpu":
        return parts[2], {"tokens": max(bins)}
    if rule == "offload_trace":
        return parts[1].removeprefix("trace_"), {"tokens": max(cfg.get("offload", {}).get("contexts", [32768]))}
    return None, {}


def points(run: Path, cfg: dict) -> pd.DataFrame:
    usage = pd.read_csv(run / "results" / "tables" / "resources.csv")
    rows = []
    for row in usage.itertuples():
        rule = RULE_OF.get(row.job.split("/")[0], row.rule)
        if rule not in MEM_FIT or pd.isna(row.peak_rss_mb):
            continue
        model, work = work_of(rule, row.job, cfg)
        facts = run / "resources" / "models" / str(model) / "facts.json"
        if not facts.is_file():
            continue
        shape = model_shape(json.loads(facts.read_text()))
        rows.append({"run": run.name, "rule": rule, "job": row.job, "peak_mb": row.peak_rss_mb,
                     "estimate_mb": peak_estimate_mb(rule, shape, **work),
                     "declared_mb": job_mem_mb(rule, shape, **work)})
    return pd.DataFrame(rows)


# A process that imports torch and transformers and loads a model holds this much before any work
# (the smallest peak of a model-loading job: stories260K's fetch, reference and quality, 424-439 MB).
BASE_MIN = 420.0


def envelope_fit(frame: pd.DataFrame) -> tuple[float, float]:
    """base, slope of the line through the largest peak at each distinct estimate (least squares;
    one distinct estimate: the slope stays 1 and the base takes the rest). The base is at least
    BASE_MIN: with two points a line may dip below what any such process holds, and it must not
    promise small jobs less than that (the slope then rises until the line covers every point)."""
    top = frame.groupby(frame.estimate_mb.round(1)).peak_mb.max()
    x, y = top.index.to_numpy(dtype=float), top.to_numpy(dtype=float)
    if len(x) < 2 or np.ptp(x) < 1:
        return float(y.max() - x.max()), 1.0
    slope, base = np.polyfit(x, y, 1)
    slope = max(float(slope), 0.0)
    base = float(np.max(y - slope * x))  # shift up: the line covers every envelope point
    if base < BASE_MIN and frame.peak_mb.min() > BASE_MIN:
        base = BASE_MIN
        slope = float(np.max((y - base) / np.maximum(x, 1e-9)))
    return base, slope


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="RUN_DIR:CONFIG[,CONFIG...]")
    args = parser.parse_args(argv)
    frames = []
    for spec in args.runs:
        run, _, cfg = spec.partition(":")
        frames.append(points(Path(run), load_config(cfg)))
    data = pd.concat(frames, ignore_index=True)
    print(f"{len(data)} jobs with a logged peak, MARGIN {MARGIN}\n")
    print(f"{'rule':14} {'jobs':>4} {'estimates MB':>17} {'peaks MB':>17} {'base':>7} {'slope':>6}   "
          f"current fit: worst headroom")
    for rule, frame in data.groupby("rule"):
        base, slope = envelope_fit(frame)
        headroom = (frame.declared_mb / frame.peak_mb).min()
        print(f"{rule:14} {len(frame):4d} {frame.estimate_mb.min():7.0f}-{frame.estimate_mb.max():<9.0f}"
              f"{frame.peak_mb.min():7.0f}-{frame.peak_mb.max():<9.0f} {base:7.0f} {slope:6.2f}   "
              f"{MEM_FIT[rule]} -> {headroom:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
