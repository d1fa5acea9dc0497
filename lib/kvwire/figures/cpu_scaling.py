"""CPU scaling: each codec's encode and decode throughput against the host's thread count."""

from __future__ import annotations

from ..errors import ConfigError
from . import register_figure
from .style import pyplot

OPS = ("encode", "decode")
CAPTION = """CPU encode (left) and decode (right) throughput of every codec, in MB/s of raw KV (log scale),
against the number of threads of one host (log scale), one line per codec and one row per model and
timer (layer: the per-layer timer of rule time_cpu; pass: one whole-cache pass) on its real cache;
flat lines are codecs that gain nothing from more cores. Made by rule figure from cpu_scaling.csv
(rule cpu_scaling; the paper's figure from paper/tables)."""


@register_figure("cpu_scaling", sources=("cpu_scaling",), caption=CAPTION)
def draw(tables):
    t = tables["cpu_scaling"]
    if t.empty:
        raise ConfigError("cpu_scaling has no rows to draw")
    plt = pyplot()
    import seaborn as sns

    if "timer" not in t.columns:  # tables from before the pass timer were per-layer
        t = t.assign(timer="layer")
    cases = sorted(t.groupby(["model", "seq", "timer"]).groups)
    codecs = sorted(t["codec"].unique())
    colours = dict(zip(codecs, sns.color_palette("tab20", len(codecs))))
    threads = sorted(t["threads"].unique())
    fig, axes = plt.subplots(len(cases), len(OPS), figsize=(7.0, 0.6 + 2.4 * len(cases)), sharex=True,
                             squeeze=False)
    for i, (model, seq, timer) in enumerate(cases):
        case = t[(t["model"] == model) & (t["seq"] == seq) & (t["timer"] == timer)]
        for j, op in enumerate(OPS):
            ax = axes[i, j]
            for codec in codecs:
                sub = case[case["codec"] == codec].sort_values("threads")
                if not sub.empty:
                    ax.plot(sub["threads"], sub[f"{op}_mbps"], "-o", ms=2.5, lw=1.0, color=colours[codec],
                            label=codec)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(threads, [str(int(n)) for n in threads])
            ax.tick_params(labelsize=6)
            ax.grid(True, which="major", lw=0.4, color="0.85")
            ax.set_title(f"{model} @ {int(seq)}, {timer} timer: {op}", fontsize=7)
            if j == 0:
                ax.set_ylabel("MB/s of raw KV", fontsize=7)
            if i == len(cases) - 1:
                ax.set_xlabel(f"threads (of {int(t['logical_cpus'].max())} logical CPUs)"
                              if "logical_cpus" in t.columns else "threads", fontsize=7)
    handles = [plt.Line2D([], [], color=colours[c], marker="o", ms=2.5, lw=1.0) for c in codecs]
    fig.legend(handles, codecs, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=6, frameon=False,
               title="codec", title_fontsize=7)
    fig.tight_layout()
    return fig
