"""Running Snakemake from the tests and reading what it planned."""

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml


def snakemake(repo, *args, cwd=None, timeout=120, env=None, snakefile=True):
    """``python -m snakemake`` on the repository's Snakefile (or on ``cwd``'s, ``snakefile=False``)."""
    cmd = [sys.executable, "-m", "snakemake", *(["-s", str(Path(repo) / "Snakefile")] if snakefile else []), *args]
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # rules that call snakemake
    return subprocess.run(cmd, cwd=cwd or repo, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PATH": path, **(env or {})})


def job_counts(stdout: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run: rule -> job count."""
    counts, in_table = {}, False
    for line in stdout.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if parts and parts[0] == "total":
                break
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
    return counts


def planned_jobs(stdout: str) -> list[dict]:
    """Every job block of a (dry) run's log: rule, wildcards and resources."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", stdout):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if not m:
            continue
        job = {"rule": m.group(1), "wildcards": {}, "resources": {}}
        for key in ("wildcards", "resources"):
            w = re.search(rf"^\s+{key}: (.*)$", block, re.M)
            if w:
                job[key] = dict(kv.split("=", 1) for kv in w.group(1).split(", ") if "=" in kv)
        jobs.append(job)
    return jobs


SMOKE_MINUTES = 10
# The Snakemake run of the smoke study in CI: one dataset and these codecs (the gates need identity,
# int8, kivi4); every other smoke codec runs through the same stage functions in-process in
# test_every_smoke_codec_on_real_caches, which saves ~10 s of process start-up and model loading per
# job on a 2-core CI machine.
E2E_DATASET = "wikitext2"
E2E_CODECS = ["identity", "zstd", "lz4", "int8", "int8+zstd", "int4", "kivi4", "kvquant2", "kvquant4", "h2o", "guardband_8x"]


def smoke_config(repo, tmp_path, codecs=E2E_CODECS, models=None, name="smoke.yaml") -> tuple[Path, dict]:
    """The smoke config cut to E2E_DATASET, ``codecs`` (and ``models``)."""
    cfg = yaml.safe_load((Path(repo) / "config" / "smoke.yaml").read_text())
    assert set(codecs) <= set(cfg["codecs"]) and E2E_DATASET in cfg["datasets"]
    cfg["datasets"] = {E2E_DATASET: cfg["datasets"][E2E_DATASET]}
    cfg["codecs"] = {c: cfg["codecs"][c] for c in codecs}
    if models:
        cfg["models"] = {m: cfg["models"][m] for m in models}
    path = Path(tmp_path) / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, cfg
