"""The router figure: regret against the oracle and floor violations per router, by bandwidth."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..plots import _pyplot, _save

ORDER = ["best_fixed", "tree_bandwidth", "tree_request", "tree_content"]


def router_regret(by_bandwidth_csv: str | Path, pdf: str | Path, png: str | Path) -> None:
    t = pd.read_csv(by_bandwidth_csv)
    t = t[t["router"].isin(ORDER)]
    if t.empty:
        raise ValueError(f"{by_bandwidth_csv} has no router rows")
    plt = _pyplot()
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
    _save(plt, fig, pdf, png)
