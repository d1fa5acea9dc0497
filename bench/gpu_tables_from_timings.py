"""The published tables that follow from the committed GPU timings (results/timing/gpu/*.csv), re-derived
after a GPU table changes, without re-running the study:

    python bench/gpu_tables_from_timings.py --out results/tables
    kvwire publish --update results/tables/{gpu_kernels,gpu_break_even,break_even_all,gpu_transfer_sweep,\
break_even_shift,decision}.csv --note "..."

gpu_kernels and gpu_break_even from the timings (rule gpu_tables' stage), then what depends on them, from
the published study's own tables (paper/tables: break_even, models, transfer_sweep, quality, cpu_scaling)
and the published config: the unified break-even and the GPU transfer sweep, the CPU-vs-GPU shift and the
decision table -- the same calls tests/test_published_tables.py makes, so the published set stays one
that regenerates byte for byte.
"""
from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from kvwire.stages.break_even import break_even_all  # noqa: E402
from kvwire.stages.gpu_tables import break_even_shift_table, gpu_tables  # noqa: E402
from kvwire.stages.paper import decision_table  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", type=Path, default=REPO / "paper" / "tables", help="the published study's tables")
    ap.add_argument("--out", type=Path, default=Path("results/tables"))
    a = ap.parse_args(argv)
    t, out = a.tables, a.out
    out.mkdir(parents=True, exist_ok=True)
    cfg = {}
    for name in ("config.yaml", "full.yaml"):  # the published study's layered configs (PUBLISHED.json)
        cfg.update(yaml.safe_load((REPO / "config" / name).read_text()) or {})
    timings = sorted(glob.glob(str(REPO / "results" / "timing" / "gpu" / "*.csv")))
    gpu_tables(timings, out / "gpu_kernels.csv", out / "gpu_break_even.csv")
    break_even_all(t / "break_even.csv", t / "models.csv", out / "gpu_break_even.csv",
                   cfg["transfer"]["gpu_bandwidths_gbps"], out / "break_even_all.csv", out / "gpu_transfer_sweep.csv",
                   cpu_dtype=cfg["extract"]["dtype"])
    break_even_shift_table(t / "break_even.csv", t / "models.csv", out / "gpu_break_even.csv",
                           out / "break_even_shift.csv", t / "cpu_scaling.csv")
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    floor = cfg.get("paper", {}).get("quality_floor",
                                     schema["properties"]["paper"]["properties"]["quality_floor"]["default"])
    decision_table(t / "transfer_sweep.csv", out / "gpu_transfer_sweep.csv", t / "quality.csv", floor,
                   out / "decision.csv")
    print(f"from {len(timings)} GPU timing tables ({', '.join(Path(p).stem for p in timings)}): "
          f"gpu_kernels, gpu_break_even, break_even_all, gpu_transfer_sweep, break_even_shift, decision -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
