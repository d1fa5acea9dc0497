"""Speed-up heat maps: codec against link bandwidth per model and transfer mode, the break-even drawn as
a line between the cells."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import ConfigError
from . import register_figure
from .style import FULL_WIDTH_IN, pyplot

# break_even is a source though the heat maps show only the sweep: the paper draws this figure where
# both are published (as before the registry)
CAPTION = """End-to-end speed-up of each codec over raw KV transfer, as heat maps of codec against link
bandwidth, one panel per model and mode (sequential, layer-pipelined), at each model's longest prompts,
from measured CPU codec timings and the analytical transfer model; the black outline is the break-even
(speed-up 1). Made by rule figure from transfer_sweep.csv (results/tables; the paper's figure from
paper/tables)."""


SPEEDUP_MODES = ("sequential", "pipelined")


def speedup_matrices(sweep: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """Codec x bandwidth speed-up matrices, one per (model, mode), at each model's largest length bin
    (the longest prompts), averaged over datasets.

    Every matrix has the same rows (codecs, by speed-up summed in log over every cell where it exceeds
    1, largest first: identity, which never pays, last) and the same columns (bandwidths, ascending);
    a codec or bandwidth a panel did not run is NaN, never 1.
    """
    largest = sweep.groupby("model")["bin"].transform("max")
    sweep = sweep[sweep["bin"] == largest]
    mean = sweep.groupby(["model", "codec", "bandwidth_gbps"], as_index=False)[
        [f"speedup_{m}" for m in SPEEDUP_MODES]].mean()
    codecs = sorted(mean["codec"].unique())
    bandwidths = sorted(mean["bandwidth_gbps"].unique())
    panels = {}
    for model in sorted(mean["model"].unique()):
        sub = mean[mean["model"] == model]
        for mode in SPEEDUP_MODES:
            m = sub.pivot(index="codec", columns="bandwidth_gbps", values=f"speedup_{mode}")
            panels[(model, mode)] = m.reindex(index=codecs, columns=bandwidths)
    if panels:  # one row order for every panel: the codec that pays off most (summed log gain) on top
        gain = pd.concat([np.log(m.clip(lower=1.0)) for m in panels.values()], axis=1).sum(axis=1)
        order = gain.sort_values(ascending=False, kind="stable").index
        panels = {k: m.loc[order] for k, m in panels.items()}
    for m in panels.values():
        m.index.name, m.columns.name = "codec", "bandwidth_gbps"
    return panels


def _break_even_segments(values: np.ndarray) -> list[list[tuple[float, float]]]:
    """Cell edges (image coordinates) between a cell with speed-up >= 1 and a neighbour below 1."""
    pays = values >= 1.0
    known = np.isfinite(values)
    segments = []
    rows, cols = values.shape
    for i in range(rows):
        for j in range(cols):
            if j + 1 < cols and known[i, j] and known[i, j + 1] and pays[i, j] != pays[i, j + 1]:
                segments.append([(j + 0.5, i - 0.5), (j + 0.5, i + 0.5)])
            if i + 1 < rows and known[i, j] and known[i + 1, j] and pays[i, j] != pays[i + 1, j]:
                segments.append([(j - 0.5, i + 0.5), (j + 0.5, i + 0.5)])
    return segments


def _speedup_text(v: float) -> str:
    """Compact cell label that stays on its side of 1 (0.996 reads .99, never 1.0): one decimal from 1x,
    two without the leading zero below it, none under 0.1 (the colour saturates there)."""
    if not np.isfinite(v) or v < 0.095:
        return ""
    if v >= 9.95:
        return f"{v:.0f}"
    if v >= 1.0:
        return f"{v:.1f}"
    return f"{min(v, 0.99):.2f}".removeprefix("0")


@register_figure("speedup_vs_bandwidth", sources=("transfer_sweep", "break_even"), caption=CAPTION)
def draw(tables):
    """End-to-end speed-up over raw transfer vs link bandwidth, per model, codec and transfer mode: heat map of speed-up (codec x bandwidth), one panel per (mode, model): rows are modes, columns
    models; a diverging map centred at 1x (log, saturating at 10x either way); the black line is the
    break-even. Drawn at the full text width."""
    import seaborn as sns
    from matplotlib.collections import LineCollection
    from matplotlib.colors import ListedColormap, LogNorm

    plt = pyplot()
    sweep = tables["transfer_sweep"]
    panels = speedup_matrices(sweep)
    if not panels:
        raise ConfigError("speed-up figure: the transfer sweep table is empty")
    models = sorted({m for m, _ in panels})
    sns.set_theme(style="white", context="paper")
    first = next(iter(panels.values()))
    n_codecs, n_bw = first.shape
    height = 0.9 + len(SPEEDUP_MODES) * (0.45 + 0.125 * n_codecs)
    fig, axes = plt.subplots(len(SPEEDUP_MODES), len(models), figsize=(FULL_WIDTH_IN, height), dpi=150,
                             squeeze=False, sharex=True, sharey=True, layout="constrained")
    # RdBu without its darkest tenth at either end: the (large) saturated regions stay readable
    cmap = ListedColormap(plt.get_cmap("RdBu")(np.linspace(0.08, 0.92, 256)), name="RdBu_soft",
                          bad="0.8")  # a cell the sweep lacks: grey, never the white of 1x
    norm = LogNorm(vmin=0.1, vmax=10.0)
    image = None
    for r, mode in enumerate(SPEEDUP_MODES):
        for c, model in enumerate(models):
            ax = axes[r, c]
            m = panels[(model, mode)]
            values = m.to_numpy(dtype=float)
            image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto",
                              interpolation="nearest")
            for (i, j), v in np.ndenumerate(values):
                text = _speedup_text(v)
                if text:
                    dark = v >= 4.0 or v <= 0.25
                    ax.text(j, i, text, ha="center", va="center", fontsize=5,
                            color="white" if dark else "0.1")
            lines = LineCollection(_break_even_segments(values), colors="black", linewidths=1.2,
                                   capstyle="projecting", gid="break-even")
            ax.add_collection(lines)
            ax.set_xlim(-0.5, n_bw - 0.5)
            ax.set_ylim(n_codecs - 0.5, -0.5)
            ax.set_xticks(range(n_bw), [f"{b:g}" for b in m.columns])
            ax.set_yticks(range(n_codecs), list(m.index))
            ax.tick_params(labelsize=6, length=2, pad=1.5)
            ax.set_title(f"{model}, {mode}", fontsize=7.5, pad=3)
            if r == len(SPEEDUP_MODES) - 1:
                ax.set_xlabel("link bandwidth (Gbps)", fontsize=7)
    cbar = fig.colorbar(image, ax=axes, location="right", shrink=0.6, aspect=30, pad=0.02, extend="both")
    cbar.set_ticks([0.1, 0.2, 0.5, 1, 2, 5, 10], labels=["0.1", "0.2", "0.5", "1", "2", "5", "10"])
    cbar.ax.tick_params(labelsize=6)
    cbar.set_label("speed-up over raw transfer (log; black line: break-even, 1x)", fontsize=7)
    bins = sweep.groupby("model")["bin"].max()
    fig.suptitle("longest prompts: " + ", ".join(f"{m} {int(b)} tokens" for m, b in bins.items()),
                 fontsize=7, color="0.3")
    return fig
