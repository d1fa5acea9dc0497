"""The published tables that derive from other committed tables regenerate byte for byte: the GPU
summaries from the committed GPU timings, the unified break-even, the GPU speed-up sweep, the
CPU-vs-GPU shift and the decision table from the published set. A refactor that changes any number
(or its formatting) in them fails here."""

import glob
from pathlib import Path

import yaml

from kvwire.stages.break_even import break_even_all
from kvwire.stages.gpu_tables import break_even_shift_table, gpu_tables
from kvwire.stages.paper import decision_table

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "paper" / "tables"


def _config() -> dict:
    cfg = {}
    for name in ("config.yaml", "full.yaml"):  # the published study's configs (PUBLISHED.json "config")
        cfg.update(yaml.safe_load((REPO / "config" / name).read_text()) or {})
    return cfg


def _same(made: Path, name: str) -> None:
    want = (PUBLISHED / name).read_bytes()
    got = made.read_bytes()
    assert got == want, f"{name} regenerates differently from the committed table"


def test_gpu_summaries_regenerate_from_the_committed_gpu_timings(tmp_path):
    gpu_tables(sorted(glob.glob(str(REPO / "results" / "timing" / "gpu" / "*.csv"))), tmp_path / "k.csv",
               tmp_path / "b.csv")
    _same(tmp_path / "k.csv", "gpu_kernels.csv")
    _same(tmp_path / "b.csv", "gpu_break_even.csv")


def test_unified_break_even_and_gpu_sweep_regenerate(tmp_path):
    cfg = _config()
    break_even_all(PUBLISHED / "break_even.csv", PUBLISHED / "models.csv", PUBLISHED / "gpu_break_even.csv",
                   cfg["transfer"]["gpu_bandwidths_gbps"], tmp_path / "all.csv", tmp_path / "sweep.csv",
                   cpu_dtype=cfg["extract"]["dtype"])
    _same(tmp_path / "all.csv", "break_even_all.csv")
    _same(tmp_path / "sweep.csv", "gpu_transfer_sweep.csv")


def test_break_even_shift_regenerates(tmp_path):
    break_even_shift_table(PUBLISHED / "break_even.csv", PUBLISHED / "models.csv", PUBLISHED / "gpu_break_even.csv",
                           tmp_path / "shift.csv", PUBLISHED / "cpu_scaling.csv")
    _same(tmp_path / "shift.csv", "break_even_shift.csv")


def test_decision_table_regenerates(tmp_path):
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    floor = _config().get("paper", {}).get("quality_floor",
                                           schema["properties"]["paper"]["properties"]["quality_floor"]["default"])
    decision_table(PUBLISHED / "transfer_sweep.csv", PUBLISHED / "gpu_transfer_sweep.csv", PUBLISHED / "quality.csv",
                   floor, tmp_path / "decision.csv")
    _same(tmp_path / "decision.csv", "decision.csv")
