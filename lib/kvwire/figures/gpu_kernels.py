"""GPU kernels: each codec's share of each GPU's copy bandwidth, encode and decode, on large caches and at
the study's own cache sizes."""

from __future__ import annotations

import numpy as np

from . import register_figure
from .style import pyplot

CAPTION = """Fraction of each GPU's measured copy bandwidth reached by each codec's Triton kernels, encode
(left) and decode (right). Top: median over caches of at least 64 MB (bars from min to max; the dotted
line is 0.85, issue 30's goal for the per-token codecs). Bottom: median over the study's own cache sizes
(under 64 MB, one request), the call replayed from a CUDA graph where the codec can be captured (bars),
the plain call (dots); the dotted line is 0.5. One colour per GPU. Made by rule figure from gpu_kernels.csv
(results/tables; the paper's figure from paper/tables)."""


@register_figure("gpu_kernels", sources=("gpu_kernels",), caption=CAPTION)
def draw(tables):
    """Fraction of each GPU's measured copy bandwidth per codec: large caches (top: median over shapes
    >= 64 MB, bars for min..max) and the study's sizes (bottom: graph replay as bars where timed, plain
    calls as dots); encode and decode side by side; one colour per GPU, so GPUs compare codec by codec."""
    plt = pyplot()
    import seaborn as sns

    t = tables["gpu_kernels"].sort_values(["codec", "op", "gpu"])
    sns.set_theme(style="whitegrid", context="paper")
    ops = ["encode", "decode"]
    codecs = sorted(t.codec.unique())
    gpus = sorted(t.gpu.unique())
    fig, axes = plt.subplots(2, 2, figsize=(max(6.0, 0.45 * len(codecs) * 2), 6.4), sharey=True)
    width = 0.8 / max(len(gpus), 1)
    palette = sns.color_palette("deep", len(gpus))
    x0 = np.arange(len(codecs))
    for col, op in enumerate(ops):
        top, bottom = axes[0, col], axes[1, col]
        for j, gpu in enumerate(gpus):
            sub = t[(t.op == op) & (t.gpu == gpu)].set_index("codec").reindex(codecs)
            x = x0 + (j - (len(gpus) - 1) / 2) * width
            err = np.vstack([sub.frac_copy_median - sub.frac_copy_min, sub.frac_copy_max - sub.frac_copy_median])
            label = (f"{gpu} (copy {sub.copy_gbps.dropna().iloc[0]:.0f} GB/s)" if sub.copy_gbps.notna().any()
                     else gpu)
            top.bar(x, sub.frac_copy_median, width, yerr=err, capsize=2, color=palette[j], label=label)
            plain = sub["frac_copy_small_median"] if "frac_copy_small_median" in sub else x * np.nan
            graph = sub["frac_copy_small_graph_median"] if "frac_copy_small_graph_median" in sub else plain * np.nan
            bottom.bar(x, graph.fillna(0.0), width, color=palette[j], alpha=0.85)
            bottom.plot(x, plain, "o", ms=3, color=palette[j], mec="black", mew=0.4)
        for ax, goal in ((top, 0.85), (bottom, 0.5)):
            ax.axhline(1.0, color="black", lw=0.8)
            ax.axhline(goal, color="black", lw=0.8, ls=":")
            ax.set_xticks(x0, codecs if ax is bottom else [], rotation=60, ha="right")
            ax.set_ylim(0, 1.1)
        top.set_title(f"{op}, caches >= 64 MB")
        bottom.set_title(f"{op}, study cache sizes (bars: CUDA graph, dots: plain call)")
    axes[0, 0].set_ylabel("fraction of device copy bandwidth")
    axes[1, 0].set_ylabel("fraction of device copy bandwidth")
    axes[0, 1].legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    return fig
