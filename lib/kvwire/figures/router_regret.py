"""The router figure: regret against the oracle and floor violations per router, by bandwidth."""

from __future__ import annotations

from ..errors import ConfigError
from . import register_figure
from .style import pyplot

ORDER = ["best_fixed", "tree_bandwidth", "tree_request", "tree_content"]
CAPTION = """Mean regret against the oracle (top) and quality-floor violations (bottom) of each router on
held-out prompts, by encoder and link bandwidth. Made by rule figure from router_by_bandwidth.csv
(results/tables; the paper's figure from paper/tables) (rule router)."""


@register_figure("router_regret", sources=("router_by_bandwidth",), caption=CAPTION)
def draw(tables):
    t = tables["router_by_bandwidth"]
    t = t[t["router"].isin(ORDER)]
    if t.empty:
        raise ConfigError("router_by_bandwidth has no router rows")
    plt = pyplot()
    import seaborn as sns

    encoders = sorted(t["encoder"].unique())
    fig, axes = plt.subplots(2, len(encoders), figsize=(3.6 * len(encoders), 5.2), sharex=True, squeeze=False)
    for j, enc in enumerate(encoders):
        sub = t[t["encoder"] == enc].assign(regret_pct=lambda d: 100 * d["regret_mean"],
                                            violations_pct=lambda d: 100 * d["floor_violations"])
        for i, (col, label) in enumerate((("regret_pct", "mean regret vs oracle (%)"),
                                          ("violations_pct", "quality-floor violations (%)"))):
            ax = axes[i, j]
            sns.lineplot(data=sub, x="bandwidth_gbps", y=col, hue="router", hue_order=ORDER, marker="o", ax=ax,
                         legend=(i == 0 and j == len(encoders) - 1))
            ax.set_xscale("log")
            ax.set_ylabel(label if j == 0 else "")
            ax.set_xlabel("link bandwidth (Gbps)")
            if i == 0:
                ax.set_title(f"encoder: {enc}")
    if axes[0, -1].get_legend():
        sns.move_legend(axes[0, -1], "upper left", bbox_to_anchor=(1.02, 1), title="router")
    return fig
