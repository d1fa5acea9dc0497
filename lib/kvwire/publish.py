"""Publishing a run's tables as the paper's: results/tables -> paper/tables, with a manifest.

The paper, `kvwire recommend` and the figures in paper/figures read paper/tables: the tables of the
reference run (machine, date, commit and config in PUBLISHED.json). A study run writes only
results/tables, so a run on another machine adds its own numbers beside the paper's and never
changes them; publishing is a deliberate step (`kvwire publish`), never a workflow job (a rule that
wrote paper/tables would make every paper figure depend on the whole study).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from .errors import KvwireError
from .io import write_json

MANIFEST = "PUBLISHED.json"
# A run's tables that the paper, the figures and `recommend` read; resources.csv describes the run.
REQUIRED = ("quality", "break_even", "transfer_sweep", "models", "codecs")


def publish(source: str | Path = "results/tables", dest: str | Path = "paper/tables", *,
            config: str | Path | Sequence[str | Path] | None = None, note: str = "") -> dict:
    """Copy every table of ``source`` into ``dest`` (tables ``dest`` has and ``source`` lacks are
    removed: the published set is one run's) and write the manifest. Returns the manifest.
    ``config``: the run's config file, or its layered files in order (``config`` and ``config_sha256``
    are then lists)."""
    source, dest = Path(source), Path(dest)
    configs = [] if config is None else [Path(config)] if isinstance(config, (str, Path)) else [Path(c) for c in config]
    for c in configs:
        if not c.is_file():
            raise KvwireError(f"config file {c} does not exist")
    tables = sorted(p for p in source.glob("*") if p.suffix in (".csv", ".tex") and p.is_file())
    missing = [t for t in REQUIRED if not (source / f"{t}.csv").is_file()]
    if missing:
        raise KvwireError(f"{source} is not a finished run: it lacks {', '.join(f'{t}.csv' for t in missing)} "
                          "(run `snakemake --cores 8 all` first)")
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*"):
        if old.suffix in (".csv", ".tex") and not (source / old.name).exists():
            old.unlink()
    for table in tables:
        shutil.copy2(table, dest / table.name)
    hashes = [hashlib.sha256(c.read_bytes()).hexdigest() for c in configs]
    one = len(configs) == 1  # a single file is recorded as before, layered files as lists
    manifest = {
        "published": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": str(source),
        "commit": _git_commit(),
        "config": (str(configs[0]) if one else [str(c) for c in configs]) if configs else None,
        "config_sha256": (hashes[0] if one else hashes) if configs else None,
        "cpu": _run_cpu(source),
        "gpu_timings": sorted(p.stem for p in Path("results/timing/gpu").glob("*.csv")),
        "note": note,
        "tables": {t.name: hashlib.sha256(t.read_bytes()).hexdigest() for t in tables},
    }
    write_json(dest / MANIFEST, manifest)
    return manifest


# tables measured apart from the study run (root and a quiet machine: links, end-to-end transfers;
# lent machines: whole-server CPU scaling, the GPU kernel timings committed under results/timing/gpu)
# or derived from the published study tables and those (bench/shift_from_published.py) may replace
# their published copy; every other table changes only with a whole run
SEPARATELY_MEASURED = ("e2e_transfer.csv", "link_model.csv", "cpu_scaling.csv", "break_even_shift.csv",
                       "gpu_kernels.csv", "gpu_break_even.csv", "gpu_real_caches.csv")

# tables a re-timing run re-derives (time_cpu and every rule after it, the quality jobs not re-run):
# they read the study's quality only through the published quality.csv, so a new timer or cost
# column reaches them without the hours of quality jobs. They are replaced together, from one run,
# so that the break-even, its sweeps and the decision table never mix two timing runs. The router
# reads the per-prompt quality records and changes only with a whole run.
RETIMED = ("break_even.csv", "break_even.tex", "transfer_sweep.csv", "break_even_all.csv",
           "gpu_transfer_sweep.csv", "decision.csv")

# the re-timed tables whose GPU side follows from gpu_break_even.csv: when new GPU timings land they are
# re-derived from the published study's CPU tables (bench/gpu_tables_from_timings.py) and may replace
# their published copies together with gpu_break_even.csv, from the same folder (the CPU side is then
# still the published run's: no two CPU timing runs mix)
GPU_DERIVED = ("break_even_all.csv", "gpu_transfer_sweep.csv", "decision.csv")


def publish_update(tables: Sequence[str | Path], dest: str | Path = "paper/tables", *,
                   config: str | Path | Sequence[str | Path] | None = None, note: str = "") -> dict:
    """Replace published tables measured apart from the study run (``SEPARATELY_MEASURED``) by a new
    run's, and record each replacement in the manifest's ``updates`` (table, date, commit, source,
    config and its sha256, note) beside the study run's own fields. Returns the manifest."""
    dest = Path(dest)
    manifest = read_manifest(dest)
    configs = [] if config is None else [Path(config)] if isinstance(config, (str, Path)) else [Path(c) for c in config]
    for c in configs:
        if not c.is_file():
            raise KvwireError(f"config file {c} does not exist")
    if not tables:
        raise KvwireError("no tables to update")
    paths = [Path(t) for t in tables]
    for t in paths:
        if t.name not in SEPARATELY_MEASURED + RETIMED:
            raise KvwireError(f"{t.name} is a study table: publish a whole run instead (only "
                              f"{', '.join(SEPARATELY_MEASURED)} are measured apart or derived from them, "
                              f"and {', '.join(RETIMED)} come from a re-timing run, together)")
        if not t.is_file():
            raise KvwireError(f"table {t} does not exist")
    retimed = [t for t in paths if t.name in RETIMED]
    names = {t.name for t in paths}
    if retimed and {t.name for t in retimed} <= set(GPU_DERIVED) and "gpu_break_even.csv" in names:
        if len({t.parent.resolve() for t in paths if t.name in GPU_DERIVED + ("gpu_break_even.csv",)}) != 1:
            raise KvwireError("tables re-derived from new GPU timings come with their gpu_break_even.csv, "
                              "from one folder")
        if not note.strip():
            raise KvwireError("a GPU timing update needs a note: the run, its commit and what was timed")
        retimed = []  # a GPU-derived update: the CPU side stays the published run's
    if retimed:
        names = {t.name for t in retimed}
        missing = [n for n in RETIMED if n not in names]
        if missing:
            raise KvwireError(f"re-timed tables are replaced together, from one run: missing {', '.join(missing)}")
        if len({t.parent.resolve() for t in retimed}) != 1:
            raise KvwireError("re-timed tables are replaced together, from one run: they come from "
                              f"{len({t.parent.resolve() for t in retimed})} folders")
        if not note.strip():
            raise KvwireError("a re-timing update needs a note: the run, its commit and what was re-timed")
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    updates = list(manifest.get("updates", []))
    for t in paths:
        shutil.copy2(t, dest / t.name)
        digest = hashlib.sha256((dest / t.name).read_bytes()).hexdigest()
        manifest["tables"][t.name] = digest
        updates.append({"table": t.name, "published": now, "commit": _git_commit(), "source": str(t),
                        "config": [str(c) for c in configs],
                        "config_sha256": [hashlib.sha256(c.read_bytes()).hexdigest() for c in configs],
                        "note": note})
    manifest["updates"] = updates
    write_json(dest / MANIFEST, manifest)
    return manifest


def _run_cpu(source: Path) -> str | None:
    """The CPU the run's jobs measured on, from its resources table (every job logs its host's)."""
    table = source / "resources.csv"
    if not table.is_file():
        return None
    import pandas as pd

    cpus = sorted(set(pd.read_csv(table)["cpu"].dropna()))
    return "; ".join(cpus) or None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def read_manifest(dest: str | Path = "paper/tables") -> dict:
    path = Path(dest) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise KvwireError(f"no readable publication manifest at {path}: {exc}") from None
