"""Codec errors: compression ratio against key and value relative MSE, one panel per model."""

from __future__ import annotations

from . import register_figure
from .style import pyplot

CAPTION = """Compression ratio (raw / wire bytes, log scale) against the relative MSE of keys and values
(log scale) for every codec, one panel per model; lossless codecs sit on the dotted floor line. Made by
rule figure from codecs.csv (results/tables; the paper's figure from paper/tables)."""


@register_figure("codec_errors", sources=("codecs",), caption=CAPTION)
def draw(tables):
    """Compression ratio vs key and value relative MSE, one panel per model, every codec labelled."""
    pyplot()  # the Agg backend, before seaborn imports pyplot
    import seaborn as sns

    table = tables["codecs"]
    long = table.melt(id_vars=["model", "codec", "ratio"], value_vars=["key_rel_mse", "value_rel_mse"],
                      var_name="tensor", value_name="rel_mse")
    long["tensor"] = long["tensor"].str.removesuffix("_rel_mse")
    # lossless codecs have zero error: draw them on the floor of the log axis, labelled as exact
    floor = long.loc[long.rel_mse > 0, "rel_mse"].min() / 10 if (long.rel_mse > 0).any() else 1e-8
    long["shown"] = long["rel_mse"].clip(lower=floor)
    sns.set_theme(style="whitegrid", context="paper")
    grid = sns.relplot(data=long, x="ratio", y="shown", hue="tensor", col="model", kind="scatter",
                       height=3.6, aspect=1.3, facet_kws={"sharey": True, "sharex": False})
    for (model,), ax in zip(((m,) for m in grid.col_names), grid.axes.flat):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(floor, color="grey", lw=0.6, ls=":")
        sub = long[(long.model == model) & (long.tensor == "key")]
        for row in sub.itertuples():
            ax.annotate(row.codec, (row.ratio, row.shown), fontsize=5, xytext=(2, 2), textcoords="offset points")
    grid.set_axis_labels("compression ratio (raw / wire bytes)", "relative MSE (dotted: exact)")
    grid.set_titles("{col_name}")
    return grid.figure
