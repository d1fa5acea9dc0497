"""Drawing helpers shared by the figures: pyplot (Agg), print sizes, log-axis ticks, per-model panels,
speed-up axes and the one-line note a figure draws when its table holds nothing to show. Plotting
only: every number shown was computed by another module."""

from __future__ import annotations

# print sizes (inches): a two-column paper's full text width; figures are drawn at it, so a point is a point
FULL_WIDTH_IN = 7.0


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display; the same pixels on every machine)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def speedup_axes(grid) -> None:
    """Log-log speed-up against bandwidth, with the break-even line (speed-up 1) dotted."""
    for ax in grid.axes.flat:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(1.0, color="black", lw=0.8, ls=":")
    grid.set_axis_labels("link bandwidth (Gbps)", "speed-up over raw transfer")


def plain_log_ticks(axis) -> None:
    """Log-axis ticks at 1-2-5 written as plain numbers (the default 3x10^0 labels collide)."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(NullFormatter())


def model_axes(n: int, *, width: float = 3.6, height: float = 3.2, **kw):
    """A row of ``n`` panels, one per model: (figure, axes)."""
    fig, axes = pyplot().subplots(1, n, figsize=(width * n, height), squeeze=False, **kw)
    return fig, axes[0]


def note(text: str):
    """A small figure that says ``text`` (a table that holds nothing to draw, said in the figure's place)."""
    fig, ax = pyplot().subplots(figsize=(5, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return fig
