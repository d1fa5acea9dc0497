"""GPU kernels: each codec's share of each GPU's copy bandwidth, encode and decode."""

from __future__ import annotations

import numpy as np

from . import register_figure
from .style import pyplot

CAPTION = """Fraction of each GPU's measured copy bandwidth reached by each codec's Triton kernel (median
over shapes of at least 64 MB, bars from min to max), encode and decode; the dotted line is issue 5's
0.80 goal. One colour per GPU. Made by rule figure from gpu_kernels.csv (results/tables; the paper's
figure from paper/tables)."""


@register_figure("gpu_kernels", sources=("gpu_kernels",), caption=CAPTION)
def draw(tables):
    """Fraction of each GPU's measured copy bandwidth per codec (median over shapes >= 64 MB, bars for
    min..max), encode and decode side by side; one colour per GPU, so GPUs compare codec by codec."""
    plt = pyplot()
    import seaborn as sns

    t = tables["gpu_kernels"].sort_values(["codec", "op", "gpu"])
    sns.set_theme(style="whitegrid", context="paper")
    ops = ["encode", "decode"]
    codecs = sorted(t.codec.unique())
    gpus = sorted(t.gpu.unique())
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 0.45 * len(codecs) * 2), 3.6), sharey=True)
    width = 0.8 / max(len(gpus), 1)
    palette = sns.color_palette("deep", len(gpus))
    for ax, op in zip(axes, ops):
        for j, gpu in enumerate(gpus):
            sub = t[(t.op == op) & (t.gpu == gpu)].set_index("codec").reindex(codecs)
            x = np.arange(len(codecs)) + (j - (len(gpus) - 1) / 2) * width
            err = np.vstack([sub.frac_copy_median - sub.frac_copy_min, sub.frac_copy_max - sub.frac_copy_median])
            ax.bar(x, sub.frac_copy_median, width, yerr=err, capsize=2, color=palette[j],
                   label=f"{gpu} (copy {sub.copy_gbps.dropna().iloc[0]:.0f} GB/s)" if sub.copy_gbps.notna().any()
                   else gpu)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.axhline(0.8, color="black", lw=0.8, ls=":")
        ax.set_xticks(np.arange(len(codecs)), codecs, rotation=60, ha="right")
        ax.set_title(op)
        ax.set_ylim(0, 1.1)
    axes[0].set_ylabel("fraction of device copy bandwidth")
    axes[1].legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    return fig
