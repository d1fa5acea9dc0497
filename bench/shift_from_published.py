"""The break-even shift table re-derived from the published tables plus the cached whole-server CPU
timings: the CPU-vs-GPU comparison with a server CPU's side, without re-running the study.

    snakemake --cores 1 results/tables/cpu_scaling.csv      # from results/timing/cpu_scaling/*.csv
    python bench/shift_from_published.py --out results/tables/break_even_shift.csv
    kvwire publish --update results/tables/break_even_shift.csv --note "..."

Inputs: paper/tables/{break_even,models,gpu_break_even}.csv (the published study's, unchanged) and
results/tables/cpu_scaling.csv; the stage is the rule break_even_shift's (``stages.gpu_tables``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from kvwire.stages.gpu_tables import break_even_shift_table  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", default="paper/tables")
    ap.add_argument("--scaling", default="results/tables/cpu_scaling.csv")
    ap.add_argument("--out", default="results/tables/break_even_shift.csv")
    a = ap.parse_args(argv)
    t = Path(a.tables)
    table = break_even_shift_table(t / "break_even.csv", t / "models.csv", t / "gpu_break_even.csv", a.out, a.scaling)
    v = table.dropna(subset=["shift_server_pipelined"]) if "shift_server_pipelined" in table else table.iloc[:0]
    print(f"{len(table)} cases, {len(v)} with a server CPU; median GPU factor over the server CPU "
          f"{v['shift_server_pipelined'].median():.3g}, over the study's CPU on the same cases "
          f"{v['shift_pipelined'].median():.3g}; written to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
