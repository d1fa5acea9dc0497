"""End-to-end transfer: measured seconds against the transfer model's."""

from __future__ import annotations

from . import register_figure
from .style import pyplot

CAPTION = """Measured end-to-end seconds against the transfer model's, one point per codec and mode
(median of the repeats); the dotted line is equality. Where the table has it, the model is fed the
break-even's own time_cpu table (coloured) and, as grey crosses, each run's own codec times. Made by rule
figure from e2e_transfer.csv (rule e2e_summary; the paper's figure from paper/tables)."""


@register_figure("e2e_model_vs_measured", sources=("e2e_transfer",), caption=CAPTION)
def draw(tables):
    """Measured end-to-end seconds against the transfer model's, per codec, sequential and pipelined."""
    pyplot()  # the Agg backend, before seaborn imports pyplot
    import seaborn as sns

    t = tables["e2e_transfer"]
    sns.set_theme(style="whitegrid", context="paper")
    grid = sns.relplot(data=t, x="model_s", y="measured_s", hue="codec", style="mode", col="rate_gbps",
                       row="model", height=3.2, aspect=1.1, s=40)
    own = "model_own_s" in t.columns and t["model_own_s"].notna().any()
    for (model, rate), ax in grid.axes_dict.items():
        lo = min(t.model_s.min(), t.measured_s.min()) * 0.8
        hi = max(t.model_s.max(), t.measured_s.max()) * 1.2
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls=":")
        if own:  # the model fed each run's own codec times, beside the one fed the break-even's table
            g = t[(t["model"] == model) & (t["rate_gbps"] == rate)]
            ax.scatter(g["model_own_s"], g["measured_s"], marker="x", color="grey", s=14, lw=0.8,
                       label="fed the run's own times")
        ax.set_xscale("log")
        ax.set_yscale("log")
    grid.set_axis_labels("model fed the break-even's table (s)" if own else "model (s)", "measured (s)")
    if own:
        grid.figure.text(0.99, 0.02, "grey x: the model fed each run's own codec times", ha="right", fontsize=7)
    grid.set_titles("{row_name}, {col_name} Gbps")
    return grid.figure
