"""The practitioner's decision flowchart, drawn from the decision table (kvwire.paper.decision):
nothing in it is placed by hand but the layout."""

from __future__ import annotations

from ..errors import ConfigError
from ..paper.decision import bandwidth_label
from . import register_figure
from .style import pyplot

CAPTION = """Decision flowchart for practitioners, drawn by rule figure from decision.csv (rule
decision_table; not by hand): quality floor, then where the encoder runs, then link bandwidth
thresholds, each ending in the codec to send with and its largest modelled speed-up, or in sending the
cache raw."""

DECIDE = {"boxstyle": "round,pad=0.4", "fc": "#fff4d6", "ec": "#8a6d1d"}
SEND = {"boxstyle": "round,pad=0.4", "fc": "#dff0d8", "ec": "#3c763d"}
RAW = {"boxstyle": "round,pad=0.4", "fc": "#e8e8e8", "ec": "#555555"}


def _arrow(ax, start, end, label=""):
    ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "-|>", "color": "#333333", "lw": 0.9})
    if label:
        horizontal = abs(start[1] - end[1]) < 1e-9
        ax.text((start[0] + end[0]) / 2 + (0 if horizontal else 0.012), (start[1] + end[1]) / 2 + 0.015, label,
                fontsize=7, color="#333333", ha="center" if horizontal else "left")


def _outcome(row) -> tuple[str, dict]:
    if row.choice == "raw":
        return "send raw", RAW
    return f"{row.choice}\n(up to {row.speedup_max:.3g}x faster)", SEND


@register_figure("decision_flowchart", sources=("decision",), caption=CAPTION)
def draw(tables):
    table = tables["decision"]
    if table.empty:
        raise ConfigError("decision has no decisions to draw")
    plt = pyplot()
    encoders = list(dict.fromkeys(table["encoder"]))
    depth = max(len(g) for _, g in table.groupby("encoder"))
    fig, ax = plt.subplots(figsize=(7.2, 1.8 + 1.0 * depth))
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    floor = table["floor"].iloc[0]
    lengths = table.groupby("encoder")["length"].first()
    length = str(int(lengths.iloc[0])) if lengths.nunique() == 1 else \
        " / ".join(f"{int(v)} ({e})" for e, v in lengths.items())
    top, step = 0.95, 0.8 / (depth + 0.6)
    ax.text(0.5, top, f"KV cache of {length} tokens to send\nquality floor: token agreement >= {floor:g} on every model",
            ha="center", va="center", fontsize=8, bbox=DECIDE)
    mid = top - 0.75 * step
    ax.text(0.5, mid, "where does the encoder run?", ha="center", va="center", fontsize=8, bbox=DECIDE)
    _arrow(ax, (0.5, top - 0.06), (0.5, mid + 0.035))
    width = 1.0 / len(encoders)
    for i, encoder in enumerate(encoders):
        rows = list(table[table["encoder"] == encoder].sort_values("from_gbps").itertuples())
        x_decide, x_out = width * (i + 0.25), width * (i + 0.77)
        y = top - 1.6 * step
        _arrow(ax, (0.5, mid - 0.035), (x_decide, y + 0.045), encoder)
        for j, row in enumerate(rows):
            text, style = _outcome(row)
            if j == len(rows) - 1:  # the last regime: no question left
                ax.text(x_decide, y, text, ha="center", va="center", fontsize=7.5, bbox=style)
                break
            nxt = rows[j + 1].from_gbps
            ax.text(x_decide, y, f"link < {bandwidth_label(nxt)} Gbps?", ha="center", va="center", fontsize=7.5,
                    bbox=DECIDE)
            ax.text(x_out, y, text, ha="center", va="center", fontsize=7.5, bbox=style)
            _arrow(ax, (x_decide + 0.095, y), (x_out - 0.11, y), "yes")
            _arrow(ax, (x_decide, y - 0.035), (x_decide, y - step + 0.045), "no")
            y -= step
    return fig
