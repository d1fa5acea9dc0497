"""Label placement shared by the figures that label every point (the Pareto figure's codecs): each
label where it overlaps no other label and no point, tied to its point by a leader line when it had
to move away."""

from __future__ import annotations

import numpy as np

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


def bbox(x0: float, y0: float, x1: float, y1: float):
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
    return [bbox(x - half, y - half, x + half, y + half)
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
    markers = [bbox(x - half, y - half, x + half, y + half) for x, y in xy]
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
                box = bbox(ax0 - pad, ay0 - pad, ax0 + w + pad, ay0 + h + pad)
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
