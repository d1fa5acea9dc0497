"""Forest plot of the codec pairs: each pair's paired difference with its interval, per model."""

from __future__ import annotations

import pandas as pd

from ..errors import ConfigError
from . import register_figure
from .style import pyplot

METRIC = "token_agreement"
CAPTION = """Each configured codec pair's difference in token agreement (a - b, same documents) with its
95 % paired, document-resampled bootstrap interval, one row per pair and one colour per model; filled
markers are differences whose interval excludes 0. Made by rule figure from quality_pairs.csv
(results/tables; the paper's figure from paper/tables)."""


@register_figure("quality_pairs", sources=("quality_pairs",), caption=CAPTION)
def draw(tables):
    """The pairs' difference in token agreement (the workflow's figure); :func:`forest` draws any metric."""
    return forest(tables["quality_pairs"], METRIC)


def forest(t: pd.DataFrame, metric: str = METRIC):
    """Forest plot of ``quality_pairs.csv``: one row per codec pair (a - b), one marker per model with its
    paired, document-resampled interval; filled where the interval excludes 0, hollow where it holds 0."""
    plt = pyplot()
    import seaborn as sns

    if t.empty:
        raise ConfigError("quality pairs figure: quality_pairs.csv has no row (config key quality.pairs is empty?)")
    sns.set_theme(style="whitegrid", context="paper")
    labels = list(dict.fromkeys(f"{a} − {b}" for a, b in zip(t.codec_a, t.codec_b)))
    models = sorted(t.model.unique())
    palette = dict(zip(models, sns.color_palette("deep", len(models))))
    fig, ax = plt.subplots(figsize=(6.0, 1.0 + 0.34 * len(labels) * max(1, len(models)) ** 0.5))
    step = 0.7 / max(len(models), 1)
    for j, model in enumerate(models):
        sub = t[t.model == model]
        for _, row in sub.iterrows():
            y = labels.index(f"{row.codec_a} − {row.codec_b}") + (j - (len(models) - 1) / 2) * step
            diff, lo, hi = row[f"{metric}_diff"], row[f"{metric}_ci_lo"], row[f"{metric}_ci_hi"]
            significant = bool(row[f"{metric}_significant"])
            ax.plot([lo, hi], [y, y], color=palette[model], lw=1.2)
            ax.plot([diff], [y], "o", ms=4, color=palette[model],
                    markerfacecolor=palette[model] if significant else "white")
    for model in models:
        ax.plot([], [], "o", color=palette[model], label=f"{model} (n={int(t[t.model == model].n_documents.max())} docs)")
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.tick_params(labelsize=7)
    name = {"token_agreement": "token agreement", "delta_ce": "Δ cross-entropy (nats/token)",
            "greedy_match": "greedy match"}[metric]
    ax.set_xlabel(f"difference in {name}, a − b (95 % paired bootstrap over documents)")
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    return fig
