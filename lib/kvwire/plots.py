"""Figures. Plotting only: every number shown was computed by another module."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .io import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, figure, *paths: str | Path) -> None:
    """Write ``figure`` atomically to each path (format from the suffix) and free it."""
    for path in paths:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=Path(path).suffix[1:], dpi=150, bbox_inches="tight")
    plt.close(figure)


def speedup_vs_bandwidth(sweep_csv: str | Path, pdf: str | Path, png: str | Path) -> None:
    """End-to-end speed-up over raw transfer vs link bandwidth, per model, codec and transfer mode."""
    import seaborn as sns

    plt = _pyplot()
    sweep = pd.read_csv(sweep_csv)
    # one curve per (model, codec, mode): average over datasets, largest bin (the longest prompts)
    largest = sweep.groupby("model")["bin"].transform("max")
    sweep = sweep[sweep["bin"] == largest]
    long = sweep.melt(id_vars=["model", "codec", "bandwidth_gbps", "bin"],
                      value_vars=["speedup_sequential", "speedup_pipelined"], var_name="mode", value_name="speedup")
    long["mode"] = long["mode"].str.removeprefix("speedup_")
    sns.set_theme(style="whitegrid", context="paper")
    grid = sns.relplot(data=long, x="bandwidth_gbps", y="speedup", hue="codec", style="mode", col="model",
                       kind="line", marker="o", height=3.2, aspect=1.2, errorbar=None,
                       facet_kws={"sharey": False})
    for ax in grid.axes.flat:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(1.0, color="black", lw=0.8, ls=":")
    grid.set_axis_labels("link bandwidth (Gbps)", "speed-up over raw transfer")
    grid.set_titles("{col_name}")
    _save(plt, grid.figure, pdf, png)


def codec_errors(codecs_csv: str | Path, pdf: str | Path, png: str | Path) -> None:
    """Compression ratio vs key and value relative MSE, one panel per model, every codec labelled."""
    import seaborn as sns

    plt = _pyplot()
    table = pd.read_csv(codecs_csv)
    long = table.melt(id_vars=["model", "codec", "ratio"], value_vars=["key_rel_mse", "value_rel_mse"],
                      var_name="tensor", value_name="rel_mse")
    long["tensor"] = long["tensor"].str.removesuffix("_rel_mse")
    # lossless codecs have zero error: draw them on the floor of the log axis, labelled as exact
    floor = long.loc[long.rel_mse > 0, "rel_mse"].min() / 10 if (long.rel_mse > 0).any() else 1e-8
    long["shown"] = long["rel_mse"].clip(lower=floor)
    sns.set_theme(style="whitegrid", context="paper")
    grid = sns.relplot(data=long, x="ratio", y="shown", hue="tensor", col="model", kind="scatter",
                       height=3.6, aspect=1.3, facet_kws={"sharey": True, "sharex": False})
    for (model,), ax in zip(((m,) for m in grid.col_names), grid.axes.flat):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(floor, color="grey", lw=0.6, ls=":")
        sub = long[(long.model == model) & (long.tensor == "key")]
        for row in sub.itertuples():
            ax.annotate(row.codec, (row.ratio, row.shown), fontsize=5, xytext=(2, 2), textcoords="offset points")
    grid.set_axis_labels("compression ratio (raw / wire bytes)", "relative MSE (dotted: exact)")
    grid.set_titles("{col_name}")
    _save(plt, grid.figure, pdf, png)
