"""Statistics of the quality study: paired bootstrap intervals, rank correlation, Pareto fronts.

Pure functions over numbers the quality stage measured; nothing here runs a model. Every random
draw comes from a ``numpy.random.Generator`` seeded by the caller, so the same inputs give the
same intervals.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import KvwireError


def bootstrap_ci(values: Sequence[float], *, seed: int, n_boot: int = 2000, level: float = 0.95
                 ) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling the values)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise KvwireError("bootstrap of an empty sample")
    if not np.isfinite(x).all():
        raise KvwireError("bootstrap sample holds NaN/Inf")
    if not 0.0 < level < 1.0:
        raise KvwireError(f"confidence level must be in (0, 1), got {level}")
    if x.size == 1 or np.all(x == x[0]):
        return float(x.mean()), float(x.mean())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)


def paired_bootstrap_ci(codec: dict[str, float], baseline: dict[str, float], *, seed: int,
                        n_boot: int = 2000, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``codec[p] - baseline[p]`` over the prompts both measured, and its bootstrap interval.

    Pairing by prompt removes the prompt-to-prompt spread that both share (a hard prompt is hard
    for every codec), which is what makes small differences between codecs visible.
    """
    missing = sorted(set(baseline) ^ set(codec))
    if missing:
        raise KvwireError(f"paired bootstrap: prompts measured on one side only: {missing[:5]}")
    keys = sorted(codec)
    diff = np.array([codec[k] - baseline[k] for k in keys], dtype=float)
    lo, hi = bootstrap_ci(diff, seed=seed, n_boot=n_boot, level=level)
    return float(diff.mean()), lo, hi


def ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    a = np.asarray(x, dtype=float)
    order = np.argsort(a, kind="stable")
    r = np.empty(a.size, dtype=float)
    r[order] = np.arange(1, a.size + 1)
    for value in np.unique(a):
        tie = a == value
        if tie.sum() > 1:
            r[tie] = r[tie].mean()
    return r


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks); NaN if either side is constant."""
    if len(x) != len(y):
        raise KvwireError(f"spearman: {len(x)} x values but {len(y)} y values")
    if len(x) < 2:
        return float("nan")
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def pareto_front(ratio: Sequence[float], quality: Sequence[float], *, ratio_rtol: float = 0.0) -> np.ndarray:
    """Bool mask of the points no other point beats: higher ratio AND higher quality (both maximized).

    A point is dominated if another is at least as good on both axes and strictly better on one;
    exact duplicates are all kept. ``ratio_rtol``: ratios within this relative distance count as
    equal (two codecs with the same payload layout differ only by their header's few bytes, which
    must not put the worse one on the front).
    """
    r = np.asarray(ratio, dtype=float)
    q = np.asarray(quality, dtype=float)
    if r.shape != q.shape:
        raise KvwireError("pareto_front: ratio and quality differ in length")
    if not 0.0 <= ratio_rtol < 1.0:
        raise KvwireError(f"pareto_front: ratio_rtol must be in [0, 1), got {ratio_rtol}")
    # [i, j]: does point j dominate point i
    ge = (r[None, :] >= r[:, None] * (1.0 - ratio_rtol)) & (q[None, :] >= q[:, None])
    gt = (r[None, :] > r[:, None] * (1.0 + ratio_rtol)) | (q[None, :] > q[:, None])
    return ~(ge & gt).any(axis=1)
