"""Does K/V cosine predict quality? 1 - cosine against delta cross-entropy, key and value panels."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import register_figure
from .style import model_axes, pyplot

CAPTION = """Does K/V cosine similarity predict quality? 1 − cosine of keys (left) and values (right)
against Δ cross-entropy (symlog), one point per (model, codec) mean; the legend gives Spearman's ρ per
model over every (lossy codec, prompt) pair from cosine_spearman.csv (results/tables; the paper's figure
from paper/tables). Made by rule figure."""


@register_figure("cosine_vs_delta_ce", sources=("quality", "cosine_spearman"), caption=CAPTION)
def draw(tables):
    """Does K/V cosine predict quality? 1 - cosine vs delta cross-entropy per (model, codec), key and
    value panels; each model's legend entry carries its Spearman rho over (codec, prompt) pairs."""
    pyplot()  # the Agg backend, before seaborn imports pyplot
    import seaborn as sns

    table = tables["quality"]
    rho = tables["cosine_spearman"].set_index("model")
    gaps = pd.concat([1.0 - table.key_cosine, 1.0 - table.value_cosine])
    # identical tensors (and rounding just above cosine 1) have no gap: draw them on a floor
    floor = gaps[gaps > 0].min() / 10 if (gaps > 0).any() else 1e-8
    changed = table.delta_ce.abs()[table.delta_ce != 0]
    linthresh = 10 ** np.floor(np.log10(changed.min())) if not changed.empty else 1e-3
    models = sorted(table.model.unique())
    sns.set_theme(style="whitegrid", context="paper")
    colours = dict(zip(models, sns.color_palette(n_colors=len(models))))
    fig, axes = model_axes(2, width=4.0, sharey=True)
    for ax, tensor in zip(axes, ("key", "value")):
        column = f"rho_{tensor}_cosine_vs_delta_ce"
        for model in models:
            sub = table[table.model == model]
            r = rho[column].get(model, np.nan) if column in rho.columns else np.nan
            label = f"{model} (ρ = {r:+.2f})" if np.isfinite(r) else f"{model} (ρ = n/a)"
            ax.scatter((1.0 - sub[f"{tensor}_cosine"]).clip(lower=floor), sub.delta_ce, s=14,
                       color=colours[model], label=label)
        ax.axvline(floor, color="grey", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=linthresh)
        ax.set_title(tensor)
        ax.set_xlabel(f"1 − {tensor} cosine (zeros drawn at {floor:.0e}, dotted)")
        ax.legend(fontsize=6, title="Spearman over prompts", title_fontsize=6)
    axes[0].set_ylabel("Δ cross-entropy vs identity (nats/token)")
    fig.tight_layout()
    return fig
