"""The smoke study's slice of the tiny real Llama through `--profile slurm` on a real single-node
SLURM cluster (Debian slurm-wlm + munge, brought up by tests/slurm/start-local-slurm.sh and
stopped afterwards): every job goes through sbatch, only the GPU rule asks for a GPU, and the
results equal the local run's."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from smk import SMOKE_MINUTES, job_counts, smoke_config, snakemake

START = Path(__file__).resolve().parent / "slurm" / "start-local-slurm.sh"
MODEL = "stories260k"
CODECS = ["identity", "int8", "kivi4"]
# CI has no slurmdbd: poll with squeue (finished jobs must stay listed: MinJobAge >> poll interval),
# and poll every 2 s instead of the plugin's 40 s default (docs/OPERATIONS.md).
CI_FLAGS = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
            "--seconds-between-status-checks", "2"]


def _running() -> bool:
    return shutil.which("sinfo") is not None and subprocess.run(
        ["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="module")
def cluster():
    """A running cluster: the one already up, else started here (as root) and stopped at the end."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    if _running():
        yield
        return
    if not START.exists():
        pytest.skip(f"no SLURM cluster running and no recipe at {START}")
    if os.geteuid() != 0:
        pytest.skip("no SLURM cluster running, and starting one needs root")
    env = {**os.environ, "SLURM_CI_MIN_JOB_AGE": "900"}
    out = subprocess.run(["bash", str(START), "start"], capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0 and _running(), out.stdout[-3000:] + out.stderr[-3000:]
    try:
        yield
    finally:
        subprocess.run(["bash", str(START), "stop"], capture_output=True, timeout=120)


def _without_seconds(obj):
    """A quality record minus its wall-clock fields (the only ones two runs may differ in)."""
    if isinstance(obj, dict):
        return {k: _without_seconds(v) for k, v in obj.items() if "seconds" not in k}
    if isinstance(obj, list):
        return [_without_seconds(v) for v in obj]
    return obj


def _gpu_request(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "JobState=COMPLETED" in out.stdout, out.stdout
    return " ".join(re.findall(r"(?:TresPerJob|TresPerNode|Gres)=(\S+)", out.stdout))


@pytest.mark.slow
@pytest.mark.timeout(2 * SMOKE_MINUTES * 60 + 900)
def test_slice_through_sbatch_equals_the_local_run(repo, cluster, smoke_study, tmp_path):
    local, _, _, env = smoke_study
    cfg_path, cfg = smoke_config(repo, tmp_path, codecs=CODECS, models=[MODEL])
    work = tmp_path / "work"
    target = f"results/slices/{MODEL}.csv"
    # from the repository root: that is where the short profile name resolves (./slurm)
    out = snakemake(repo, "--profile", "slurm", *CI_FLAGS, "--configfile", str(cfg_path), "-d", str(work),
                    "--", target, cwd=repo, snakefile=False, env=env, timeout=SMOKE_MINUTES * 60)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]

    # every job went through sbatch, each with its own SLURM job
    submitted = dict(re.findall(r"has been submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/", log))
    counts = job_counts(log)
    assert counts["quality"] == len(CODECS) and counts["model_slice"] == 1
    assert len(submitted) == sum(counts.values()), (len(submitted), counts)
    # only the GPU-tagged rule asked SLURM for a GPU
    for job_id, rule in submitted.items():
        assert ("gpu" in _gpu_request(job_id)) == (rule == "extract_kv"), (rule, _gpu_request(job_id))

    # the same bytes on the wire and the same quality as the local run
    for codec in CODECS:
        ours = json.loads((work / f"results/quality/{MODEL}/{codec}.json").read_text())
        theirs = json.loads((local / f"results/quality/{MODEL}/{codec}.json").read_text())
        assert _without_seconds(ours) == _without_seconds(theirs), codec
        wires = sorted((work / f"results/wire/{MODEL}/{codec}").glob("*.kvw"))
        assert wires
        for w in wires:
            assert w.read_bytes() == (local / w.relative_to(work)).read_bytes(), w
    manifest = (work / target).read_text()
    assert all(f"results/quality/{MODEL}/{c}.json" in manifest for c in CODECS)
