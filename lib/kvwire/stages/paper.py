"""The paper's generated parts from the published tables (rules decision_table, paper_table, paper_macros):
read the CSVs, call ``kvwire.paper``, write atomically."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Iterator

import pandas as pd

from ..io import atomic_path, write_csv
from ..paper.decision import decision_frame
from ..paper.latex_tables import LATEX_TABLES, render
from ..paper.macros import TABLES, build_macros, render_macros


class CsvTables(Mapping):
    """Published tables by name, each read on first use; a name whose file does not exist is absent."""

    def __init__(self, paths: Mapping[str, str | Path]):
        self.paths = {k: Path(v) for k, v in paths.items() if Path(v).exists()}
        self._frames: dict[str, pd.DataFrame] = {}

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self.paths:
            raise KeyError(name)
        if name not in self._frames:
            self._frames[name] = pd.read_csv(self.paths[name])
        return self._frames[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)


def decision_table(cpu_sweep_csv: str | Path, gpu_sweep_csv: str | Path, quality_csv: str | Path, floor: float,
                   out_csv: str | Path) -> pd.DataFrame:
    """Which codec to send a cache with, per encoder and bandwidth (``paper.decision``)."""
    table = decision_frame(pd.read_csv(cpu_sweep_csv), pd.read_csv(gpu_sweep_csv), pd.read_csv(quality_csv), floor)
    write_csv(out_csv, table)
    return table


def latex_table(name: str, tables: Mapping[str, str | Path], out_tex: str | Path) -> pd.DataFrame:
    """The paper's LaTeX table ``name`` (``paper.latex_tables.LATEX_TABLES``) from its published tables."""
    frame, column_format = LATEX_TABLES[name].build(CsvTables(tables))
    with atomic_path(out_tex) as tmp:
        Path(tmp).write_text(render(frame, column_format))
    return frame


def paper_macros(tables: Mapping[str, str | Path], floor: float, out_tex: str | Path,
                 manifest: str | Path | None = None) -> tuple[dict[str, str], list[str]]:
    """Every number the paper quotes, as LaTeX macros, from the published tables present; ``manifest``:
    the published set's PUBLISHED.json (its provenance macros). Returns (macros, missing tables)."""
    from ..publish import read_manifest

    tables = {name: path for name, path in tables.items() if name in TABLES}
    macros, missing = build_macros(CsvTables(tables), floor,
                                   None if manifest is None else read_manifest(Path(manifest).parent))
    with atomic_path(out_tex) as tmp:
        Path(tmp).write_text(render_macros(macros, missing))
    return macros, missing
