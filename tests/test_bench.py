"""bench/cpu_codecs.py runs and reports ratios that match the real container bytes."""

import subprocess
import sys

import pytest

from conftest import random_layers  # noqa: F401  (conftest sets the environment)
from kvwire import wire
from kvwire.codecs import build
from kvwire.codecs.base import LayerKV

import torch


def run_bench(repo, *args):
    out = subprocess.run([sys.executable, str(repo / "bench" / "cpu_codecs.py"), "--random", "2x2x64x16",
                          "--repeats", "1", "--threads", "1", *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_bench_table_matches_container_bytes(repo, tmp_path):
    csv = tmp_path / "bench.csv"
    text = run_bench(repo, "--codecs", "int8", "kivi2+zstd", "--csv", str(csv), "--omp-wait-policy", "ACTIVE")
    assert "OMP_WAIT_POLICY=ACTIVE" in text
    import pandas as pd

    table = pd.read_csv(csv).set_index("codec")
    g = torch.Generator().manual_seed(0)  # the bench's random_cache(seed=0)
    layers = [LayerKV(torch.randn(2, 64, 16, generator=g).bfloat16(), torch.randn(2, 64, 16, generator=g).bfloat16())
              for _ in range(2)]
    raw = sum(layer.raw_bytes for layer in layers)
    for name in ("int8", "kivi2+zstd"):
        assert table.loc[name, "ratio"] == pytest.approx(raw / len(wire.encode(build(name), layers)), rel=1e-3)
        assert table.loc[name, "encode_mb_s"] > 0 and table.loc[name, "decode_mb_s"] > 0


def test_bench_reads_a_study_config(repo):
    text = run_bench(repo, "--config", str(repo / "config" / "smoke.yaml"))
    assert "guardband_8x" in text and "kvquant4" in text
    # token-selection codecs need attention statistics a random cache does not have: said, not hidden
    assert "h2o" in text and "skipped" in text
