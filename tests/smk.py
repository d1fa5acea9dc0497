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


SMOKE_MINUTES = 12
# config/smoke.yaml runs to the end by Snakemake in CI (in a fresh clone); every other codec runs
# through the same stage functions in-process in test_every_smoke_codec_on_real_caches, which saves
# ~10 s of process start-up and model loading per job on a 2-core CI machine.
E2E_DATASET = "wikitext2"


def smoke_config(repo, tmp_path, codecs=None, models=None, name="smoke.yaml") -> tuple[Path, dict]:
    """config/smoke.yaml, cut to ``codecs`` (and ``models``) when given, written to ``tmp_path``."""
    cfg = yaml.safe_load((Path(repo) / "config" / "smoke.yaml").read_text())
    if codecs:
        assert set(codecs) <= set(cfg["codecs"])
        cfg["codecs"] = {c: cfg["codecs"][c] for c in codecs}
    if models:
        cfg["models"] = {m: cfg["models"][m] for m in models}
    path = Path(tmp_path) / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, cfg


def fresh_clone(repo, dest) -> Path:
    """What a clone of this checkout holds, in ``dest`` (a folder with no ../shared beside it):
    tracked files plus untracked ones git does not ignore (so the test sees the working tree), and
    nothing else (no resources/, no results/ bulk data, no .snakemake, no .venv)."""
    import shutil
    import subprocess

    repo, dest = Path(repo), Path(dest)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for f in filter(None, files):
        src, dst = repo / f, dest / f
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(src.readlink())
        else:
            shutil.copy2(src, dst)
    assert not (dest.parent / "shared").exists()
    return dest
