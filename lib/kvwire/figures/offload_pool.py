"""The offload pool figure: what the GPU page pool does in the replay (hit rate, stall share) per
offload mode and context."""

from __future__ import annotations

from ..errors import ConfigError
from . import register_figure
from .offload_latency import MODES, label_panel, mode_grid, offload_rows

CAPTION = """The GPU page pool in the replay: hit rate and stall share against all-GPU per offload mode
and context. Made by rule figure from offload.csv (results/tables; the paper's figure from
paper/tables)."""


@register_figure("offload_pool", sources=("offload",), caption=CAPTION)
def draw(tables):
    t = offload_rows(tables["offload"])
    t = t[(t["kind"] == "replay") & (t["mode"] != "all_gpu")]
    if t.empty:
        raise ConfigError("offload has no replay rows of an offload mode")
    models, fig, axes, colors = mode_grid(t, height=5.2)
    for j, model in enumerate(models):
        for i, (col, label) in enumerate((("hit_rate", "pool hit rate"), ("stall_pct", "stall vs all-GPU (%)"))):
            ax = axes[i, j]
            for mode in MODES[1:]:
                sub = t[(t["model"] == model) & (t["mode"] == mode)].sort_values("context")
                if not sub.empty:
                    ax.plot(sub["context"], sub[col], "-o", color=colors[mode], ms=4, label=mode)
            label_panel(ax, i, j, model, label)
    axes[0, -1].legend(fontsize=7)
    return fig
