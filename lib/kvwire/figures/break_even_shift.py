"""Break-even shift: each codec's break-even bandwidth on the CPU against the GPU."""

from __future__ import annotations

import pandas as pd

from . import register_figure
from .style import note, pyplot

CAPTION = """Break-even bandwidth (log scale) per codec and prompt length, CPU against GPU, sequential
and pipelined: below it, compressing before the transfer cuts end-to-end time. Drawn by rule figure from
the table of rule break_even_shift (results/tables or, for the paper, paper/tables)."""


@register_figure("break_even_shift", sources=("break_even_shift",), caption=CAPTION)
def draw(tables):
    """Break-even bandwidth of each codec on the CPU and on the GPU (pipelined and sequential), per
    model and prompt length: how far a GPU codec moves the line below which compression pays."""
    pyplot()  # the Agg backend, before seaborn imports pyplot
    import seaborn as sns

    t = tables["break_even_shift"]
    if t.empty:  # no study model has a GPU-timed shape (e.g. the smoke study's tiny model): say so
        return note("no study model matches a GPU-timed cache shape")
    long = pd.concat([
        t.assign(device="CPU", mode=mode, gbps=t[f"cpu_gbps_{mode}"]) for mode in ("sequential", "pipelined")
    ] + [
        t.assign(device=t["gpu"], mode=mode, gbps=t[f"gpu_gbps_{mode}"]) for mode in ("sequential", "pipelined")
    ], ignore_index=True)
    long = long[long["bin"] == long.groupby("model")["bin"].transform("max")]  # the table has every bin
    long["case"] = long["codec"] + " @ " + long["bin"].astype(str)
    sns.set_theme(style="whitegrid", context="paper")
    grid = sns.catplot(data=long, x="case", y="gbps", hue="device", col="model", row="mode", kind="bar",
                       height=2.8, aspect=1.6, sharex=False, errorbar=None)
    for ax in grid.axes.flat:
        ax.set_yscale("log")
    for ax in grid.axes[-1]:
        for label in ax.get_xticklabels():
            label.set_rotation(40)
            label.set_ha("right")
    for ax in grid.axes[:-1].flat:  # the rows share their cases: labels only under the last row
        ax.set_xticklabels([])
        ax.set_xlabel("")
    grid.set_axis_labels("codec @ prompt tokens", "break-even bandwidth (Gbps)")
    grid.set_titles("{col_name}, {row_name}")
    return grid.figure
