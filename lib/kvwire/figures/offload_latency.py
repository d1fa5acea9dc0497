"""The offload latency figure: per-token latency and time to first token against context, per offload
mode (replay solid, simulation dashed)."""

from __future__ import annotations

import pandas as pd

from ..errors import ConfigError
from . import register_figure
from .style import pyplot

MODES = ["all_gpu", "reactive", "predictive", "predictive_int8"]
CAPTION = """Per-token latency (TPOT p50) and time to first token from KV in host memory against context,
per offload mode: GPU replay solid, simulation dashed. Made by rule figure from offload.csv
(results/tables; the paper's figure from paper/tables)."""


def offload_rows(t: pd.DataFrame) -> pd.DataFrame:
    """The offload table, refused when it holds no row of the study (shared with offload_pool)."""
    if t.empty or "kind" not in t:
        raise ConfigError("offload has no offload rows")
    return t


def mode_grid(t, *, height: float):
    """Two rows of panels, one column per model (sorted), and one colour per offload mode."""
    plt = pyplot()
    models = sorted(t["model"].unique())
    fig, axes = plt.subplots(2, len(models), figsize=(3.8 * len(models), height), sharex="col", squeeze=False)
    return models, fig, axes, dict(zip(MODES, plt.rcParams["axes.prop_cycle"].by_key()["color"]))


def label_panel(ax, i: int, j: int, model: str, label: str) -> None:
    """A grid panel's axes: log2 contexts, the metric on the first column, the model atop the first row."""
    ax.set_xscale("log", base=2)
    ax.set_ylabel(label if j == 0 else "")
    if i == 0:
        ax.set_title(model)
    else:
        ax.set_xlabel("context (tokens)")


@register_figure("offload_latency", sources=("offload",), caption=CAPTION)
def draw(tables):
    t = offload_rows(tables["offload"])
    models, fig, axes, colors = mode_grid(t, height=5.6)
    for j, model in enumerate(models):
        for i, (col, label) in enumerate((("tpot_p50_ms", "TPOT p50 (ms)"), ("ttft_ms", "TTFT from host KV (ms)"))):
            ax = axes[i, j]
            for mode in MODES:
                for kind, style in (("replay", "-o"), ("simulation", "--")):
                    sub = t[(t["model"] == model) & (t["mode"] == mode) & (t["kind"] == kind)].sort_values("context")
                    if not sub.empty:
                        ax.plot(sub["context"], sub[col], style, color=colors[mode], ms=4,
                                label=f"{mode} ({'GPU replay' if kind == 'replay' else 'simulation'})")
            label_panel(ax, i, j, model, label)
    handles, labels = axes[0, -1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.subplots_adjust(bottom=0.2)
    return fig
