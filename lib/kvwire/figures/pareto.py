"""Pareto figure: compression ratio against token agreement per model, the front's staircase, every
codec labelled."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import ConfigError
from . import register_figure
from .labels import bbox, place_labels
from .style import FULL_WIDTH_IN, plain_log_ticks, pyplot

CAPTION = """Compression ratio (log scale, from the real wire bytes) against token agreement with its 95 %
paired bootstrap interval, one panel per model, every codec labelled; Pareto-optimal codecs highlighted
and joined by the front's staircase. Made by rule figure from quality.csv (results/tables; the paper's
figure from paper/tables)."""


def pareto_steps(ratio, quality) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the staircase through Pareto-optimal points (both axes maximised), in ratio order.

    Between two neighbours the line holds the quality of the one with the larger ratio: the best
    quality reachable at *at least* that ratio, i.e. the edge of the region the front dominates.
    """
    r = np.asarray(ratio, dtype=float)
    q = np.asarray(quality, dtype=float)
    if r.shape != q.shape:
        raise ConfigError(f"pareto_steps: {r.size} ratios but {q.size} qualities")
    order = np.lexsort((-q, r))  # ratio ascending, the better quality first on ties
    r, q = r[order], q[order]
    xs, ys = [], []
    for i in range(r.size):
        if i:
            xs.append(r[i - 1])
            ys.append(q[i])
        xs.append(r[i])
        ys.append(q[i])
    return np.array(xs), np.array(ys)



@register_figure("pareto", sources=("quality",), caption=CAPTION)
def draw(tables):
    """Compression ratio vs token agreement (95 % paired-bootstrap bars), one panel per model;
    Pareto-optimal codecs highlighted and joined by their staircase; every codec labelled where its
    label overlaps no other label or point (a leader line when it had to move away). Drawn at the full
    text width."""
    import seaborn as sns

    plt = pyplot()
    table = tables["quality"].copy()
    table["pareto"] = table["pareto"].astype(str).str.lower().eq("true")  # CSV round trip of a bool
    models = sorted(table.model.unique())
    sns.set_theme(style="whitegrid", context="paper")
    front_colour, other_colour = sns.color_palette()[3], "0.55"
    fig, axes = plt.subplots(1, len(models), figsize=(FULL_WIDTH_IN, 3.3), dpi=150, squeeze=False,
                             sharey=True)
    axes = axes[0]
    # limits with room for labels: log ratio padded 12 % each side, agreement 8 % below and above
    lr = np.log10(table.ratio.astype(float))
    span = max(lr.max() - lr.min(), 0.1)
    xlim = 10 ** (lr.min() - 0.12 * span), 10 ** (lr.max() + 0.12 * span)
    lo = min(table.token_agreement_ci_lo.min(), table.token_agreement.min())
    hi = max(table.token_agreement_ci_hi.max(), table.token_agreement.max())
    ylim = lo - 0.08 * (hi - lo), hi + 0.08 * (hi - lo)
    panels = []
    for ax, model in zip(axes, models):
        sub = table[table.model == model]
        bars = []
        for on_front, colour, label in ((False, other_colour, "dominated"), (True, front_colour, "Pareto-optimal")):
            pts = sub[sub.pareto == on_front]
            if pts.empty:
                continue
            # an interval may not contain its mean after rounding; bars cannot be negative
            err = np.vstack([(pts.token_agreement - pts.token_agreement_ci_lo).clip(lower=0),
                             (pts.token_agreement_ci_hi - pts.token_agreement).clip(lower=0)])
            ax.errorbar(pts.ratio, pts.token_agreement, yerr=err, fmt="o", ms=4, color=colour, ecolor=colour,
                        elinewidth=0.8, capsize=2, label=label, zorder=3 if on_front else 2)
            bars.append(pts)
        front = sub[sub.pareto]
        steps = None
        if not front.empty:
            steps = pareto_steps(front.ratio, front.token_agreement)
            ax.plot(*steps, color=front_colour, lw=1.0, zorder=1)
        ax.set_xscale("log")
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        plain_log_ticks(ax.xaxis)
        ax.tick_params(labelsize=7, pad=2)
        ax.set_title(model, fontsize=8, pad=3)
        ax.set_xlabel("compression ratio (raw / wire bytes)", fontsize=7.5)
        panels.append((ax, sub, pd.concat(bars) if bars else sub.iloc[:0], steps))
    axes[0].set_ylabel("token agreement with identity (95 % CI)", fontsize=7.5)
    legend = axes[0].legend(fontsize=6, loc="lower left", borderaxespad=0.3, handletextpad=0.3)
    fig.tight_layout(pad=0.3, w_pad=0.6)  # the layout is final from here on: labels are placed in pixels
    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72.0
    for ax, sub, bars, steps in panels:
        to_px = ax.transData.transform
        soft = []
        for row in bars.itertuples():  # whiskers and caps, 2.5 pt either side
            (x, y0), (_, y1) = to_px([(row.ratio, row.token_agreement_ci_lo),
                                      (row.ratio, row.token_agreement_ci_hi)])
            soft.append(bbox(x - 2.5 * px, y0, x + 2.5 * px, y1))
        if steps is not None:
            pts = to_px(np.column_stack(steps))
            for p, q in zip(pts[:-1], pts[1:]):
                soft.append(bbox(p[0], p[1], q[0], q[1]).padded(0.7 * px))
        hard = [legend.get_window_extent(renderer)] if ax is axes[0] else []
        # the front first (it is what the figure is about), then the rest, each by ratio
        order = sub.sort_values(["pareto", "ratio"], ascending=[False, True])
        place_labels(ax, order.ratio.to_numpy(), order.token_agreement.to_numpy(), list(order.codec),
                     renderer=renderer, hard=hard, soft=soft, fontsize=6.0)
    return fig
