"""Running Snakemake from the tests and reading what it planned."""

import os
import re
import subprocess
import sys
from pathlib import Path


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
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
            elif parts and parts[0] == "total":
                break
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
