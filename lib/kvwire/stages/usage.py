"""What each job of a run used: one row per benchmark file (`benchmark:` of every rule), with the
exact peak resident memory the job's own log records (runtime.USAGE_MARK) beside Snakemake's
sampled one and the mem_mb the rule declared. `results/tables/resources.csv` (rule
resource_usage); docs/OPERATIONS.md#memory explains the columns and how mem_mb is set from them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..errors import KvwireError
from ..io import write_csv
from .runtime import USAGE_MARK

COLUMNS = ["rule", "job", "wall_s", "cpu_s", "threads", "declared_mem_mb", "peak_rss_mb", "sampled_max_rss_mb",
           "headroom", "cpu"]


def _split(benchmark: str | Path) -> tuple[Path, Path]:
    """(run folder, job path) of ``<run>/results/benchmarks/<job>.tsv``."""
    parts = Path(benchmark).parts
    for i in range(len(parts) - 1, 0, -1):
        if parts[i - 1:i + 1] == ("results", "benchmarks"):
            return Path(*parts[:i - 1]) if i > 1 else Path("."), Path(*parts[i + 1:]).with_suffix("")
    raise KvwireError(f"{str(benchmark)!r} is not a benchmark file under results/benchmarks/")


def log_of(benchmark: str | Path) -> Path:
    """The job's log beside its benchmark file: every rule names them alike (logs/X.log,
    results/benchmarks/X.tsv)."""
    run, job = _split(benchmark)
    return run / "logs" / job.with_suffix(".log")


def read_usage(log: str | Path) -> dict | None:
    """The last usage record a job wrote to its log, or None (a job that is not a kvwire stage)."""
    try:
        lines = Path(log).read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if USAGE_MARK in line:
            try:
                return json.loads(line.split(USAGE_MARK, 1)[1])
            except json.JSONDecodeError:
                return None
    return None


def read_benchmark(path: str | Path) -> dict:
    """Snakemake's benchmark file: a header and one row per repeat (the last row is kept)."""
    try:
        table = pd.read_csv(path, sep="\t")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise KvwireError(f"benchmark file {str(path)!r} cannot be read: {exc}") from None
    if table.empty or "s" not in table.columns:
        raise KvwireError(f"benchmark file {str(path)!r} has no timing row (columns {list(table.columns)})")
    return table.iloc[-1].to_dict()


def usage_table(benchmarks: list[str | Path], out_csv: str | Path) -> pd.DataFrame:
    rows = []
    for path in benchmarks:
        _, rel = _split(path)
        bench = read_benchmark(path)
        usage = read_usage(log_of(path)) or {}
        sampled = _number(bench.get("max_rss"))
        peak = usage.get("peak_rss_mb")
        declared = usage.get("declared_mem_mb")
        rows.append({
            "rule": usage.get("rule") or rel.parts[0],
            "job": str(rel),
            "wall_s": _number(bench.get("s")),
            "cpu_s": usage.get("cpu_s", _number(bench.get("cpu_time"))),
            "threads": usage.get("threads"),
            "declared_mem_mb": declared,
            "peak_rss_mb": peak,
            "sampled_max_rss_mb": sampled,
            # declared over the exact peak (or the sampled one where the job wrote none): < 1 means
            # the job used more than it claimed
            "headroom": (declared / (peak or sampled)) if declared and (peak or sampled) else None,
            "cpu": usage.get("cpu"),
        })
    table = pd.DataFrame(rows, columns=COLUMNS).sort_values(["rule", "job"], kind="stable")
    write_csv(out_csv, table)
    return table


def _number(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value == value else None  # NaN: a job too short for Snakemake to sample
