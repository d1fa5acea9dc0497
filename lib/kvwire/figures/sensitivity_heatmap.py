"""Sensitivity heat map: each codec's quality drop against identity, per model."""

from __future__ import annotations

import pandas as pd

from ..errors import ConfigError
from . import register_figure
from .style import pyplot

METRIC = "token_agreement"  # the metric of the workflow's figure (the caption says so)
CAPTION = """Per-model sensitivity: each codec's drop in token agreement against identity on the same
prompts (positive = worse), codecs sorted by mean drop; a blank cell is a codec not run on that model.
Made by rule figure from quality.csv (results/tables; the paper's figure from paper/tables)."""

# per metric: True when larger is better (the drop is identity - codec), False when smaller is
SENSITIVITY_METRICS = {"token_agreement": True, "greedy_match": True, "delta_ce": False}


def sensitivity_matrix(by_model: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Codec x model matrix of the drop in ``metric`` versus the model's identity codec.

    Positive means worse than identity. Identity's own row (all zeros) is left out; a codec a model
    did not run is NaN (shown blank), never 0. Rows are sorted by mean drop over models, smallest first.
    """
    if metric not in SENSITIVITY_METRICS:
        raise ConfigError(f"sensitivity metric {metric!r} is not one of {sorted(SENSITIVITY_METRICS)}")
    dup = by_model[by_model.duplicated(["model", "codec"], keep=False)]
    if not dup.empty:
        raise ConfigError(f"several rows for (model, codec) {sorted(set(zip(dup.model, dup.codec)))}")
    drops = []
    for model, sub in by_model.groupby("model", sort=True):
        ident = sub.loc[sub.codec == "identity", metric]
        if ident.empty:
            raise ConfigError(f"model {model!r} has no identity row to measure the drop against")
        diff = ident.iloc[0] - sub[metric] if SENSITIVITY_METRICS[metric] else sub[metric] - ident.iloc[0]
        drops.append(pd.DataFrame({"model": model, "codec": sub.codec, "drop": diff}))
    long = pd.concat(drops, ignore_index=True)
    long = long[long.codec != "identity"]
    matrix = long.pivot(index="codec", columns="model", values="drop")
    order = matrix.mean(axis=1).sort_values(kind="stable").index  # pivot sorted codecs by name: ties stay so
    matrix = matrix.loc[order]
    matrix.columns.name = None
    return matrix


@register_figure("sensitivity_heatmap", sources=("quality",), caption=CAPTION)
def draw(tables):
    """The drop in token agreement (the workflow's figure); :func:`heatmap` draws any metric."""
    return heatmap(tables["quality"], METRIC)


def heatmap(quality: pd.DataFrame, metric: str = METRIC):
    """Heatmap of ``sensitivity_matrix``: which codecs hurt which models, cells annotated."""
    plt = pyplot()
    import seaborn as sns

    matrix = sensitivity_matrix(quality, metric)
    if matrix.empty:
        raise ConfigError("sensitivity heatmap: no codec besides identity in the table")
    sns.set_theme(style="whitegrid", context="paper")
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * matrix.shape[1], 1.2 + 0.28 * matrix.shape[0]))
    label = {"token_agreement": "drop in token agreement vs identity",
             "greedy_match": "drop in greedy match vs identity",
             "delta_ce": "Δ cross-entropy vs identity (nats/token)"}[metric]
    sns.heatmap(matrix, ax=ax, annot=True, fmt=".3f", annot_kws={"fontsize": 6}, cmap="vlag", center=0.0,
                linewidths=0.5, linecolor="white", cbar_kws={"label": label})  # NaN cells stay blank
    ax.grid(False)  # the style's grid would show through the blank (missing) cells
    ax.set_xlabel("model")
    ax.set_ylabel("codec (mean drop, smallest first)")
    ax.tick_params(labelsize=6)
    ax.tick_params(axis="y", labelrotation=0)
    return fig
