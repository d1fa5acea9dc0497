"""Stage: draw one registered figure (:mod:`kvwire.figures`) from its tables to a PDF and a PNG.

The only code that touches paths for figures: it reads each source table (a CSV), hands the figure's
draw function the DataFrames keyed by source name, and writes both outputs atomically (a failed draw
leaves neither). Rule ``figure`` runs it with ``{root}/tables/<source>.csv`` for every source."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import pandas as pd

from ..errors import ConfigError
from ..figures import figure as registered
from ..figures.style import pyplot
from ..io import atomic_path

LOG = logging.getLogger("kvwire.figures")
DPI = 150


def read_tables(name: str, tables: Mapping[str, str | Path]) -> dict[str, pd.DataFrame]:
    """The figure's source tables as DataFrames, keyed by source name (every source, nothing else)."""
    sources = registered(name).sources
    missing = [s for s in sources if s not in tables]
    if missing:
        raise ConfigError(f"figure {name!r} is drawn from {list(sources)}; no table given for {missing}")
    return {s: pd.read_csv(tables[s]) for s in sources}


def save(fig, *paths: str | Path) -> None:
    """Write ``fig`` atomically to each path (format from the suffix) and free it."""
    plt = pyplot()
    try:
        for path in paths:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=Path(path).suffix[1:], dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)


def draw_figure(name: str, tables: Mapping[str, str | Path], pdf: str | Path, png: str | Path) -> None:
    """Draw figure ``name`` from ``tables`` (source name -> CSV path) to ``pdf`` and ``png``."""
    frames = read_tables(name, tables)
    LOG.info("figure %s from %s", name, ", ".join(str(tables[s]) for s in frames))
    pyplot()  # the Agg backend before any draw function (or seaborn) imports pyplot
    save(registered(name).draw(frames), pdf, png)
