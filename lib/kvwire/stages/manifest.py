"""A slice manifest: every file one model's slice of the study produced, with its size and sha256
(what a per-model rerun delivered, and what to compare two runs' outputs by)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..io import write_csv


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def slice_manifest(model: str, files: Sequence[str | Path], out_csv: str | Path) -> pd.DataFrame:
    """One row per file of ``model``'s slice: path, bytes, sha256. A file of another model is a
    wiring error of the caller and stops here, before the manifest claims it."""
    if not files:
        raise ValueError(f"slice of model {model!r} has no files")
    rows = []
    for f in sorted(map(str, files)):
        if f"/{model}/" not in f and not Path(f).name.startswith(f"{model}."):
            raise ValueError(f"{f} is not part of model {model!r}'s slice")
        p = Path(f)
        if not p.is_file():
            raise FileNotFoundError(f"slice file {f} does not exist")
        rows.append({"model": model, "path": f, "bytes": p.stat().st_size, "sha256": sha256_of(p)})
    table = pd.DataFrame(rows)
    write_csv(out_csv, table)
    return table
