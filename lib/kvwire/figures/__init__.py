"""The figures: one module per figure, each registering itself with ``@register_figure``.

A figure is a name (the output stem: ``{root}/figures/<name>.{pdf,png}``), the tables it is drawn
from (``sources``: names of ``{root}/tables/<source>.csv``), the report caption, and a draw function
that takes those tables as DataFrames keyed by source name and returns the matplotlib figure. Nothing
here touches a path: :mod:`kvwire.stages.figures` reads the tables and writes the files, and the
workflow (rule ``figure``, common.smk) derives its targets, inputs and captions from :data:`FIGURES`.

Every module of this package is imported here, so adding a figure is one new module, named after the
figure, plus its test; drawing helpers shared by several figures live in ``style`` and ``labels``.
Importing the package imports no matplotlib (the workflow reads the registry at parse time).
"""

from __future__ import annotations

import importlib as _importlib
import pkgutil as _pkgutil
from dataclasses import dataclass
from typing import Callable, Mapping

from ..errors import ConfigError


@dataclass(frozen=True)
class Figure:
    """One figure: ``draw(tables)`` with ``tables[source]`` a DataFrame per name in ``sources``."""

    name: str
    sources: tuple[str, ...]
    caption: str
    draw: Callable[[Mapping[str, "object"]], "object"]
    module: str = ""


FIGURES: dict[str, Figure] = {}


def register_figure(name: str, *, sources: tuple[str, ...] | list[str], caption: str):
    """Decorator of a draw function: make figure ``name`` (drawn from ``sources``) known."""

    def register(draw):
        if name in FIGURES:
            raise ConfigError(f"figure {name!r} registered twice ({FIGURES[name].module}, {draw.__module__})")
        if not sources:
            raise ConfigError(f"figure {name!r} names no source table")
        FIGURES[name] = Figure(name, tuple(sources), " ".join(caption.split()), draw, draw.__module__)
        return draw

    return register


def figure(name: str) -> Figure:
    try:
        return FIGURES[name]
    except KeyError:
        raise ConfigError(f"unknown figure {name!r}; known: {', '.join(sorted(FIGURES))}") from None


for _module in sorted(m.name for m in _pkgutil.iter_modules(__path__)):
    if not _module.startswith("_"):
        _importlib.import_module(f"{__name__}.{_module}")

__all__ = ["FIGURES", "Figure", "figure", "register_figure"]
