"""Figures. Plotting only: every number shown was computed by another module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ConfigError
from .io import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, figure, *paths: str | Path) -> None:
    """Write ``figure`` atomically to each path (format from the suffix) and free it."""
    for path in paths:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=Path(path).suffix[1:], dpi=150, bbox_inches="tight")
    plt.close(figure)


def _speedup_axes(grid) -> None:
    """Log-log speed-up against bandwidth, with the break-even line (speed-up 1) dotted."""
    for ax in grid.axes.flat:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(1.0, color="black", lw=0.8, ls=":")
    grid.set_axis_labels("link bandwidth (Gbps)", "speed-up over raw transfer")


SPEEDUP_MODES = ("sequential", "pipelined")
# print sizes (inches): a two-column paper's full text width; figures are drawn at it, so a point is a point
FULL_WIDTH_IN = 7.0


def speedup_matrices(sweep: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """Codec x bandwidth speed-up matrices, one per (model, mode), at each model's largest length bin
    (the longest prompts), averaged over datasets.

    Every matrix has the same rows (codecs, by speed-up summed in log over every cell where it exceeds
    1, largest first: identity, which never pays, last) and the same columns (bandwidths, ascending);
    a codec or bandwidth a panel did not run is NaN, never 1.
    """
    largest = sweep.groupby("model")["bin"].transform("max")
    sweep = sweep[sweep["bin"] == largest]
    mean = sweep.groupby(["model", "codec", "bandwidth_gbps"], as_index=False)[
        [f"speedup_{m}" for m in SPEEDUP_MODES]].mean()
    codecs = sorted(mean["codec"].unique())
    bandwidths = sorted(mean["bandwidth_gbps"].unique())
    panels = {}
    for model in sorted(mean["model"].unique()):
        sub = mean[mean["model"] == model]
        for mode in SPEEDUP_MODES:
            m = sub.pivot(index="codec", columns="bandwidth_gbps", values=f"speedup_{mode}")
            panels[(model, mode)] = m.reindex(index=codecs, columns=bandwidths)
    if panels:  # one row order for every panel: the codec that pays off most (summed log gain) on top
        gain = pd.concat([np.log(m.clip(lower=1.0)) for m in panels.values()], axis=1).sum(axis=1)
        order = gain.sort_values(ascending=False, kind="stable").index
        panels = {k: m.loc[order] for k, m in panels.items()}
    for m in panels.values():
        m.index.name, m.columns.name = "codec", "bandwidth_gbps"
    return panels


def _break_even_segments(values: np.ndarray) -> list[list[tuple[float, float]]]:
    """Cell edges (image coordinates) between a cell with speed-up >= 1 and a neighbour below 1."""
    pays = values >= 1.0
    known = np.isfinite(values)
    segments = []
    rows, cols = values.shape
    for i in range(rows):
        for j in range(cols):
            if j + 1 < cols and known[i, j] and known[i, j + 1] and pays[i, j] != pays[i, j + 1]:
                segments.append([(j + 0.5, i - 0.5), (j + 0.5, i + 0.5)])
            if i + 1 < rows and known[i, j] and known[i + 1, j] and pays[i, j] != pays[i + 1, j]:
                segments.append([(j - 0.5, i + 0.5), (j + 0.5, i + 0.5)])
    return segments


def _speedup_text(v: float) -> str:
    """Compact cell label that stays on its side of 1 (0.996 reads .99, never 1.0): one decimal from 1x,
    two without the leading zero below it, none under 0.1 (the colour saturates there)."""
    if not np.isfinite(v) or v < 0.095:
        return ""
    if v >= 9.95:
        return f"{v:.0f}"
    if v >= 1.0:
        return f"{v:.1f}"
    return f"{min(v, 0.99):.2f}".removeprefix("0")


def _speedup_figure(sweep: pd.DataFrame):
    """Heat map of speed-up (codec x bandwidth), one panel per (mode, model): rows are modes, columns
    models; a diverging map centred at 1x (log, saturating at 10x either way); the black line is the
    break-even. Drawn at the full text width."""
    import seaborn as sns
    from matplotlib.collections import LineCollection
    from matplotlib.colors import ListedColormap, LogNorm

    plt = _pyplot()
    panels = speedup_matrices(sweep)
    if not panels:
        raise ConfigError("speed-up figure: the transfer sweep table is empty")
    models = sorted({m for m, _ in panels})
    sns.set_theme(style="white", context="paper")
    first = next(iter(panels.values()))
    n_codecs, n_bw = first.shape
    height = 0.9 + len(SPEEDUP_MODES) * (0.45 + 0.125 * n_codecs)
    fig, axes = plt.subplots(len(SPEEDUP_MODES), len(models), figsize=(FULL_WIDTH_IN, height), dpi=150,
                             squeeze=False, sharex=True, sharey=True, layout="constrained")
    # RdBu without its darkest tenth at either end: the (large) saturated regions stay readable
    cmap = ListedColormap(plt.get_cmap("RdBu")(np.linspace(0.08, 0.92, 256)), name="RdBu_soft",
                          bad="0.8")  # a cell the sweep lacks: grey, never the white of 1x
    norm = LogNorm(vmin=0.1, vmax=10.0)
    image = None
    for r, mode in enumerate(SPEEDUP_MODES):
        for c, model in enumerate(models):
            ax = axes[r, c]
            m = panels[(model, mode)]
            values = m.to_numpy(dtype=float)
            image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto",
                              interpolation="nearest")
            for (i, j), v in np.ndenumerate(values):
                text = _speedup_text(v)
                if text:
                    dark = v >= 4.0 or v <= 0.25
                    ax.text(j, i, text, ha="center", va="center", fontsize=5,
                            color="white" if dark else "0.1")
            lines = LineCollection(_break_even_segments(values), colors="black", linewidths=1.2,
                                   capstyle="projecting", gid="break-even")
            ax.add_collection(lines)
            ax.set_xlim(-0.5, n_bw - 0.5)
            ax.set_ylim(n_codecs - 0.5, -0.5)
            ax.set_xticks(range(n_bw), [f"{b:g}" for b in m.columns])
            ax.set_yticks(range(n_codecs), list(m.index))
            ax.tick_params(labelsize=6, length=2, pad=1.5)
            ax.set_title(f"{model}, {mode}", fontsize=7.5, pad=3)
            if r == len(SPEEDUP_MODES) - 1:
                ax.set_xlabel("link bandwidth (Gbps)", fontsize=7)
    cbar = fig.colorbar(image, ax=axes, location="right", shrink=0.6, aspect=30, pad=0.02, extend="both")
    cbar.set_ticks([0.1, 0.2, 0.5, 1, 2, 5, 10], labels=["0.1", "0.2", "0.5", "1", "2", "5", "10"])
    cbar.ax.tick_params(labelsize=6)
    cbar.set_label("speed-up over raw transfer (log; black line: break-even, 1x)", fontsize=7)
    bins = sweep.groupby("model")["bin"].max()
    fig.suptitle("longest prompts: " + ", ".join(f"{m} {int(b)} tokens" for m, b in bins.items()),
                 fontsize=7, color="0.3")
    return fig


def speedup_vs_bandwidth(sweep_csv: str | Path, pdf: str | Path, png: str | Path) -> None:
    """End-to-end speed-up over raw transfer vs link bandwidth, per model, codec and transfer mode: a heat
    map per (mode, model) centred at 1x, the break-even drawn as a line between the cells."""
    plt = _pyplot()
    _save(plt, _speedup_figure(pd.read_csv(sweep_csv)), pdf, png)


def codec_errors(codecs_csv: str | Path, pdf: str | Path, png: str | Path) -> None:
    """Compression ratio vs key and value relative MSE, one panel per model, every codec labelled."""
    import seaborn as sns

    plt = _pyplot()
    table = pd.read_csv(codecs_csv)
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
    _save(plt, grid.figure, pdf, png)


def pareto_steps(ratio, quality) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the staircase through Pareto-optimal points (both axes maximised), in ratio order.

    Between two neighbours the line holds the quality of the one with the larger ratio: the best
    quality reachable at *at least* that ratio, i.e. the edge of the region the front dominates.
    """
    r = np.asarray(ratio, dtype=float)
    q = np.asarray(quality, dtype=float)
    if r.shape != q.shape:
        raise ConfigError(f"pareto_steps: {r.size} ratios but {q.size} qualities")
    order = np.lexsort((-q, r))  # ratio ascending, the better quality first on ties
    r, q = r[order], q[order]
    xs, ys = [], []
    for i in range(r.size):
        if i:
            xs.append(r[i - 1])
            ys.append(q[i])
        xs.append(r[i])
        ys.append(q[i])
    return np.array(xs), np.array(ys)


def _plain_log_ticks(axis) -> None:
    """Log-axis ticks at 1-2-5 written as plain numbers (the default 3x10^0 labels collide)."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(NullFormatter())


def _model_axes(plt, n: int, *, width: float = 3.6, height: float = 3.2, **kw):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False, **kw)
    return fig, axes[0]


LABEL_GID = "codec-label"  # the gid of every codec label the placer draws (tests find them by it)
LEADER_GID = "codec-leader"

# candidate label offsets (points) around a point: nearest ring first, east first on each ring
_RINGS_PT = (4.0, 9.0, 15.0, 22.0, 30.0, 39.0, 49.0, 61.0, 75.0)
_ANGLES_NEAR = (0, 45, -45, 180, 135, -135, 90, -90)
_ANGLES_FAR = _ANGLES_NEAR + (22.5, -22.5, 157.5, -157.5, 67.5, -67.5, 112.5, -112.5)
_LEADER_COST = 3.0  # pt^2 of covered error bar or line worth one pt less of distance from the point


def _alignment(angle: float) -> tuple[str, str]:
    """Text alignment that puts the label on the far side of its anchor, seen from the point."""
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    ha = "left" if c > 0.3 else "right" if c < -0.3 else "center"
    va = "bottom" if s > 0.3 else "top" if s < -0.3 else "center"
    return ha, va


def _box(x0: float, y0: float, x1: float, y1: float):
    from matplotlib.transforms import Bbox

    return Bbox([[min(x0, x1), min(y0, y1)], [max(x0, x1), max(y0, y1)]])


def _overlap_area(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _box_distance(box, point) -> float:
    """Display distance from ``point`` to the nearest point of ``box`` (0 inside it)."""
    return float(np.hypot(max(box.x0 - point[0], 0.0, point[0] - box.x1),
                          max(box.y0 - point[1], 0.0, point[1] - box.y1)))


def _crosses(a, b) -> bool:
    """Whether display-space segments a = (p, q) and b = (r, s) properly intersect."""
    (p, q), (r, s) = np.asarray(a, float), np.asarray(b, float)

    def side(o, u, v):
        return np.sign((u[0] - o[0]) * (v[1] - o[1]) - (u[1] - o[1]) * (v[0] - o[0]))

    return side(p, q, r) * side(p, q, s) < 0 and side(r, s, p) * side(r, s, q) < 0


def _segment_boxes(p, q, step: float, half: float) -> list:
    """Small boxes along the display-space segment p-q (a line as obstacles)."""
    n = max(int(np.hypot(q[0] - p[0], q[1] - p[1]) / step), 1)
    return [_box(x - half, y - half, x + half, y + half)
            for x, y in zip(np.linspace(p[0], q[0], n + 1), np.linspace(p[1], q[1], n + 1))]


def place_labels(ax, xs, ys, texts, *, renderer, hard=(), soft=(), fontsize: float = 6.0,
                 marker_pt: float = 3.0, pad_pt: float = 1.0) -> list:
    """Label each point (data coordinates) where its text overlaps no other label and no point.

    Greedy, in the order given. Candidates are offsets on rings of growing radius around the point
    (``_RINGS_PT``). A candidate is allowed when its box, padded by ``pad_pt``, stays inside the axes and
    clear of the labels placed so far, of every other point's marker (``marker_pt`` half-size) and of
    the ``hard`` display-space boxes. Of those, the label takes the cheapest: the area it covers of the
    ``soft`` boxes (error bars, lines) and of earlier leader lines, plus its distance from the point,
    plus a penalty when it sits nearer another point than its own, plus, with a leader line, what that
    line crosses (other points, labels, leaders). A label away from its point gets a thin leader line,
    drawn under the markers, into the point. The layout must be final: the boxes are display
    coordinates. Returns the Text artists (gid ``LABEL_GID``; leaders have ``LEADER_GID``).
    """
    from matplotlib.lines import Line2D
    from matplotlib.transforms import offset_copy

    fig = ax.figure
    px = fig.dpi / 72.0  # pixels per point
    xy = ax.transData.transform(np.column_stack([np.asarray(xs, float), np.asarray(ys, float)]))
    frame = ax.get_window_extent(renderer)
    pad, half = pad_pt * px, marker_pt * px
    markers = [_box(x - half, y - half, x + half, y + half) for x, y in xy]
    hard, soft = list(hard), list(soft)
    placed, leaders, leader_segments, artists = [], [], [], []
    for k, (text, (x, y)) in enumerate(zip(texts, xy)):
        artist = ax.text(xs[k], ys[k], text, fontsize=fontsize, gid=LABEL_GID, zorder=5)
        extent = artist.get_window_extent(renderer)
        w, h = extent.width, extent.height
        own = markers[:k] + markers[k + 1:]
        best = None
        for ring, r in enumerate(_RINGS_PT):
            if best is not None and best[0] <= _LEADER_COST * (r - 2.0 * pad_pt):
                break  # a box on this ring or beyond sits so far out that its distance alone costs more
            for angle in (_ANGLES_NEAR if ring < 2 else _ANGLES_FAR):
                ha, va = _alignment(angle)
                dx, dy = r * np.cos(np.radians(angle)), r * np.sin(np.radians(angle))
                ax0 = x + dx * px - {"left": 0.0, "center": w / 2, "right": w}[ha]
                ay0 = y + dy * px - {"bottom": 0.0, "center": h / 2, "top": h}[va]
                box = _box(ax0 - pad, ay0 - pad, ax0 + w + pad, ay0 + h + pad)
                inside = (box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0
                          and box.y1 <= frame.y1)
                if not inside or any(box.overlaps(b) for b in placed + own + hard):
                    continue
                # costs in pt^2: what the box covers, plus the distance it sits from its point
                near = (min(max(x, box.x0), box.x1), min(max(y, box.y0), box.y1))
                gap = _box_distance(box, (x, y)) / px
                cost = sum(_overlap_area(box, b) for b in soft + leaders) / px**2 + _LEADER_COST * gap
                # a label nearer another point than its own would be read as that point's: avoid it, and
                # where it cannot be helped, a leader says whose it is
                other = min((_box_distance(box, q) / px for j, q in enumerate(xy) if j != k), default=np.inf)
                ambiguous = other < gap + 3.0
                cost += 30.0 * ambiguous
                leader = None
                if (ring > 0 and gap > marker_pt + 2.0) or (ambiguous and gap > marker_pt + 0.5):
                    # a leader into the point (the marker hides its end)
                    leader = (near, (x, y))
                    # the part outside its own marker should miss the other markers, labels and leaders
                    path = [b for b in _segment_boxes(*leader, 2 * px, 0.5 * px) if not b.overlaps(markers[k])]
                    cost += sum(4.0 * _overlap_area(b, o) for b in path for o in placed) / px**2
                    cost += sum(50.0 * _overlap_area(b, o) for b in path for o in own) / px**2
                    cost += 100.0 * sum(_crosses(leader, seg) for seg in leader_segments) + 10.0
                if best is None or cost < best[0]:
                    best = (cost, dx, dy, ha, va, box, leader)
        if best is None:  # nowhere clear (an impossibly crowded axes): keep it beside its point
            best = (np.inf, 3.0, 0.0, "left", "center", None, None)
        _, dx, dy, ha, va, box, leader = best
        artist.set_transform(offset_copy(ax.transData, fig=fig, x=dx, y=dy, units="points"))
        artist.set_ha(ha)
        artist.set_va(va)
        artists.append(artist)
        if box is not None:
            placed.append(box)
        if leader is not None:
            (x0, y0), (x1, y1) = ax.transData.inverted().transform(np.array(leader))
            ax.add_line(Line2D([x0, x1], [y0, y1], lw=0.45, color="0.4", zorder=1.5, gid=LEADER_GID))
            leaders.extend(_segment_boxes(*leader, 2 * px, 0.5 * px))
            leader_segments.append(leader)
    return artists


def _pareto_figure(table: pd.DataFrame):
    """The Pareto figure (see ``pareto_per_model``) as a Figure, labels placed, at the full text width."""
    import seaborn as sns

    plt = _pyplot()
    table = table.copy()
    table["pareto"] = table["pareto"].astype(str).str.lower().eq("true")  # CSV round trip of a bool
    models = sorted(table.model.unique())
    sns.set_theme(style="whitegrid", context="paper")
    front_colour, other_colour = sns.color_palette()[3], "0.55"
    fig, axes = plt.subplots(1, len(models), figsize=(FULL_WIDTH_IN, 3.3), dpi=150, squeeze=False,
                             sharey=True)
    axes = axes[0]
    # limits with room for labels: log ratio padded 12 % each side, agreement 8 % below and above
    lr = np.log10(table.ratio.astype(float))
    span = max(lr.max() - lr.min(), 0.1)
    xlim = 10 ** (lr.min() - 0.12 * span), 10 ** (lr.max() + 0.12 * span)
    lo = min(table.token_agreement_ci_lo.min(), table.token_agreement.min())
    hi = max(table.token_agreement_ci_hi.max(), table.token_agreement.max())
    ylim = lo - 0.08 * (hi - lo), hi + 0.08 * (hi - lo)
    panels = []
    for ax, model in zip(axes, models):
        sub = table[table.model == model]
        bars = []
        for on_front, colour, label in ((False, other_colour, "dominated"), (True, front_colour, "Pareto-optimal")):
            pts = sub[sub.pareto == on_front]
            if pts.empty:
                continue
            # an interval may not contain its mean after rounding; bars cannot be negative
            err = np.vstack([(pts.token_agreement - pts.token_agreement_ci_lo).clip(lower=0),
                             (pts.token_agreement_ci_hi - pts.token_agreement).clip(lower=0)])
            ax.errorbar(pts.ratio, pts.token_agreement, yerr=err, fmt="o", ms=4, color=colour, ecolor=colour,
                        elinewidth=0.8, capsize=2, label=label, zorder=3 if on_front else 2)
            bars.append(pts)
        front = sub[sub.pareto]
        steps = None
        if not front.empty:
            steps = pareto_steps(front.ratio, front.token_agreement)
            ax.plot(*steps, color=front_colour, lw=1.0, zorder=1)
        ax.set_xscale("log")
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        _plain_log_ticks(ax.xaxis)
        ax.tick_params(labelsize=7, pad=2)
        ax.set_title(model, fontsize=8, pad=3)
        ax.set_xlabel("compression ratio (raw / wire bytes)", fontsize=7.5)
        panels.append((ax, sub, pd.concat(bars) if bars else sub.iloc[:0], steps))
    axes[0].set_ylabel("token agreement with identity (95 % CI)", fontsize=7.5)
    legend = axes[0].legend(fontsize=6, loc="lower left", borderaxespad=0.3, handletextpad=0.3)
    fig.tight_layout(pad=0.3, w_pad=0.6)  # the layout is final from here on: labels are placed in pixels
    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72.0
    for ax, sub, bars, steps in panels:
        to_px = ax.transData.transform
        soft = []
        for row in bars.itertuples():  # whiskers and caps, 2.5 pt either side
            (x, y0), (_, y1) = to_px([(row.ratio, row.token_agreement_ci_lo),
                                      (row.ratio, row.token_agreement_ci_hi)])
            soft.append(_box(x - 2.5 * px, y0, x + 2.5 * px, y1))
        if steps is not None:
            pts = to_px(np.column_stack(steps))
            for p, q in zip(pts[:-1], pts[1:]):
                soft.append(_box(p[0], p[1], q[0], q[1]).padded(0.7 * px))
        hard = [legend.get_window_extent(renderer)] if ax is axes[0] else []
        # the front first (it is what the figure is about), then the rest, each by ratio
        order = sub.sort_values(["pareto", "ratio"], ascending=[False, True])
        place_labels(ax, order.ratio.to_numpy(), order.token_agreement.to_numpy(), list(order.codec),
                     renderer=renderer, hard=hard, soft=soft, fontsize=6.0)
    return fig


def pareto_per_model(by_model_csv: str | Path, pdf: str | Path, png: str | Path) -> None:
    """Compression ratio vs token agreement (95 % paired-bootstrap bars), one panel per model;
    Pareto-optimal codecs highlighted and joined by their staircase; every codec labelled where its
    label overlaps no other label or point (a leader line when it had to move away)."""
    plt = _pyplot()
    _save(plt, _pareto_figure(pd.read_csv(by_model_csv)), pdf, png)


def cosine_vs_delta_ce(by_model_csv: str | Path, spearman_csv: str | Path, pdf: str | Path,
                       png: str | Path) -> None:
    """Does K/V cosine predict quality? 1 - cosine vs delta cross-entropy per (model, codec), key and
    value panels; each model's legend entry carries its Spearman rho over (codec, prompt) pairs."""
    import seaborn as sns

    plt = _pyplot()
    table = pd.read_csv(by_model_csv)
    rho = pd.read_csv(spearman_csv).set_index("model")
    gaps = pd.concat([1.0 - table.key_cosine, 1.0 - table.value_cosine])
    # identical tensors (and rounding just above cosine 1) have no gap: draw them on a floor
    floor = gaps[gaps > 0].min() / 10 if (gaps > 0).any() else 1e-8
    changed = table.delta_ce.abs()[table.delta_ce != 0]
    linthresh = 10 ** np.floor(np.log10(changed.min())) if not changed.empty else 1e-3
    models = sorted(table.model.unique())
    sns.set_theme(style="whitegrid", context="paper")
    colours = dict(zip(models, sns.color_palette(n_colors=len(models))))
    fig, axes = _model_axes(plt, 2, width=4.0, sharey=True)
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
    _save(plt, fig, pdf, png)


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


def sensitivity_heatmap(by_model_csv: str | Path, pdf: str | Path, png: str | Path, *,
                        metric: str = "token_agreement") -> None:
    """Heatmap of ``sensitivity_matrix``: which codecs hurt which models, cells annotated."""
    import seaborn as sns

    plt = _pyplot()
    matrix = sensitivity_matrix(pd.read_csv(by_model_csv), metric)
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
    _save(plt, fig, pdf, png)


def quality_pairs_forest(pairs_csv: str | Path, pdf: str | Path, png: str | Path, *,
                         metric: str = "token_agreement") -> None:
    """Forest plot of ``quality_pairs.csv``: one row per codec pair (a - b), one marker per model with its
    paired, document-resampled interval; filled where the interval excludes 0, hollow where it holds 0."""
    import seaborn as sns

    plt = _pyplot()
    t = pd.read_csv(pairs_csv)
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
    _save(plt, fig, pdf, png)


def gpu_kernel_throughput(summary_csv: str | Path, pdf: str | Path, png: str | Path) -> None:
    """Fraction of each GPU's measured copy bandwidth per codec (median over shapes >= 64 MB, bars for
    min..max), encode and decode side by side; one colour per GPU, so GPUs compare codec by codec."""
    import seaborn as sns

    plt = _pyplot()
    t = pd.read_csv(summary_csv).sort_values(["codec", "op", "gpu"])
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
    _save(plt, fig, pdf, png)


def break_even_shift(shift_csv: str | Path, pdf: str | Path, png: str | Path) -> None:
    """Break-even bandwidth of each codec on the CPU and on the GPU (pipelined and sequential), per
    model and prompt length: how far a GPU codec moves the line below which compression pays."""
    import seaborn as sns

    plt = _pyplot()
    t = pd.read_csv(shift_csv)
    if t.empty:  # no study model has a GPU-timed shape (e.g. the smoke study's tiny model): say so
        fig, ax = plt.subplots(figsize=(5, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no study model matches a GPU-timed cache shape", ha="center", va="center")
        _save(plt, fig, pdf, png)
        return
    long = pd.concat([
        t.assign(device="CPU", mode=mode, gbps=t[f"cpu_gbps_{mode}"]) for mode in ("sequential", "pipelined")
    ] + [
        t.assign(device=t["gpu"], mode=mode, gbps=t[f"gpu_gbps_{mode}"]) for mode in ("sequential", "pipelined")
    ], ignore_index=True)
    long = long[long["bin"] == long.groupby("model")["bin"].transform("max")]  # the table has every bin
    long["case"] = long["codec"] + " @ " + long["bin"].astype(str)
    sns.set_theme(style="whitegrid", context="paper")
    grid = sns.catplot(data=long, x="case", y="gbps", hue="device", col="model", row="mode", kind="bar",
                       height=2.8, aspect=1.6, sharex=False, errorbar=None)
    for ax in grid.axes.flat:
        ax.set_yscale("log")
    for ax in grid.axes[-1]:
        for label in ax.get_xticklabels():
            label.set_rotation(40)
            label.set_ha("right")
    for ax in grid.axes[:-1].flat:  # the rows share their cases: labels only under the last row
        ax.set_xticklabels([])
        ax.set_xlabel("")
    grid.set_axis_labels("codec @ prompt tokens", "break-even bandwidth (Gbps)")
    grid.set_titles("{col_name}, {row_name}")
    _save(plt, grid.figure, pdf, png)


def speedup_cpu_gpu(cpu_sweep_csv: str | Path, gpu_sweep_csv: str | Path, pdf: str | Path,
                    png: str | Path) -> None:
    """Speed-up over raw transfer vs bandwidth, the same codecs on the CPU (dashed) and the GPU
    (solid), per study model at its longest prompt bin timed on both, sequential and pipelined."""
    import seaborn as sns

    plt = _pyplot()
    cpu = pd.read_csv(cpu_sweep_csv).rename(columns={"bin": "seq"})
    cpu = cpu.groupby(["model", "seq", "codec", "bandwidth_gbps"], as_index=False)[
        ["speedup_sequential", "speedup_pipelined"]].median().assign(device="CPU")
    gpu = pd.read_csv(gpu_sweep_csv)
    gpu = gpu[gpu["model"].isin(cpu["model"])]
    both = cpu.merge(gpu[["model", "seq", "codec"]].drop_duplicates(), on=["model", "seq", "codec"])
    if both.empty:
        fig, ax = plt.subplots(figsize=(5, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no study model and length is timed on both CPU and GPU", ha="center", va="center")
        _save(plt, fig, pdf, png)
        return
    seq = both.groupby("model")["seq"].max()
    gpu = gpu.assign(device=gpu["device_name"])
    t = pd.concat([cpu, gpu], ignore_index=True)
    keep = both[["model", "seq", "codec"]].drop_duplicates()
    t = t.merge(keep[keep["seq"] == keep["model"].map(seq)], on=["model", "seq", "codec"])
    long = t.melt(id_vars=["model", "seq", "codec", "device", "bandwidth_gbps"],
                  value_vars=["speedup_sequential", "speedup_pipelined"], var_name="mode", value_name="speedup")
    long["mode"] = long["mode"].str.removeprefix("speedup_")
    long["panel"] = long["model"] + " @ " + long["seq"].astype(str)
    devices = ["CPU"] + sorted(set(long["device"]) - {"CPU"})
    sns.set_theme(style="whitegrid", context="paper")
    grid = sns.relplot(data=long, x="bandwidth_gbps", y="speedup", hue="codec", style="device",
                       style_order=devices, dashes={d: ((4, 2) if d == "CPU" else "") for d in devices},
                       col="panel", row="mode", kind="line", height=3.0, aspect=1.3, errorbar=None,
                       palette="tab20", facet_kws={"sharey": False})
    _speedup_axes(grid)
    grid.set_titles("{col_name} tokens, {row_name}")
    _save(plt, grid.figure, pdf, png)


def e2e_model_vs_measured(summary_csv: str | Path, pdf: str | Path, png: str | Path) -> None:
    """Measured end-to-end seconds against the transfer model's, per codec, sequential and pipelined."""
    import seaborn as sns

    plt = _pyplot()
    t = pd.read_csv(summary_csv)
    sns.set_theme(style="whitegrid", context="paper")
    grid = sns.relplot(data=t, x="model_s", y="measured_s", hue="codec", style="mode", col="rate_gbps",
                       row="model", height=3.2, aspect=1.1, s=40)
    own = "model_own_s" in t.columns and t["model_own_s"].notna().any()
    for (model, rate), ax in grid.axes_dict.items():
        lo = min(t.model_s.min(), t.measured_s.min()) * 0.8
        hi = max(t.model_s.max(), t.measured_s.max()) * 1.2
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls=":")
        if own:  # the model fed each run's own codec times, beside the one fed the break-even's table
            g = t[(t["model"] == model) & (t["rate_gbps"] == rate)]
            ax.scatter(g["model_own_s"], g["measured_s"], marker="x", color="grey", s=14, lw=0.8,
                       label="fed the run's own times")
        ax.set_xscale("log")
        ax.set_yscale("log")
    grid.set_axis_labels("model fed the break-even's table (s)" if own else "model (s)", "measured (s)")
    if own:
        grid.figure.text(0.99, 0.02, "grey x: the model fed each run's own codec times", ha="right", fontsize=7)
    grid.set_titles("{row_name}, {col_name} Gbps")
    _save(plt, grid.figure, pdf, png)
