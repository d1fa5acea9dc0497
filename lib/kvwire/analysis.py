"""Statistics of the quality study: (cluster, paired) bootstrap intervals, rank correlation, Pareto fronts.

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


def cluster_bootstrap_ci(values: Sequence[float], clusters: Sequence, *, seed: int, n_boot: int = 2000,
                         level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``, resampling whole clusters.

    ``clusters[i]`` names the independent unit that value ``i`` belongs to (its document: prompts cut
    from one document are not independent samples). A resample draws as many clusters as there are,
    with replacement, and its mean is the sum of their values over the count of their values. With
    one value per cluster this is :func:`bootstrap_ci`, draw for draw.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise KvwireError("bootstrap of an empty sample")
    if len(clusters) != x.size:
        raise KvwireError(f"cluster bootstrap: {x.size} values but {len(clusters)} cluster labels")
    if not np.isfinite(x).all():
        raise KvwireError("bootstrap sample holds NaN/Inf")
    if not 0.0 < level < 1.0:
        raise KvwireError(f"confidence level must be in (0, 1), got {level}")
    first_seen: dict = {}  # clusters numbered in order of appearance: one value each = the plain bootstrap
    code = np.array([first_seen.setdefault(c, len(first_seen)) for c in clusters], dtype=np.int64)
    sums = np.bincount(code, weights=x)
    counts = np.bincount(code).astype(float)
    if sums.size == 1 or np.all(x == x[0]):
        return float(x.mean()), float(x.mean())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, sums.size, size=(n_boot, sums.size))
    means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)


def paired_bootstrap_ci(codec: dict[str, float], baseline: dict[str, float], *, seed: int,
                        n_boot: int = 2000, level: float = 0.95, clusters: dict[str, str] | None = None
                        ) -> tuple[float, float, float]:
    """Mean of ``codec[p] - baseline[p]`` over the prompts both measured, and its bootstrap interval.

    Pairing by prompt removes the prompt-to-prompt spread that both share (a hard prompt is hard
    for every codec), which is what makes small differences between codecs visible. ``clusters``
    maps each prompt to its document: the differences are then resampled by document
    (:func:`cluster_bootstrap_ci`); without it every prompt is its own document.
    """
    missing = sorted(set(baseline) ^ set(codec))
    if missing:
        raise KvwireError(f"paired bootstrap: prompts measured on one side only: {missing[:5]}")
    keys = sorted(codec)
    diff = np.array([codec[k] - baseline[k] for k in keys], dtype=float)
    if clusters is None:
        lo, hi = bootstrap_ci(diff, seed=seed, n_boot=n_boot, level=level)
    else:
        unknown = [k for k in keys if k not in clusters]
        if unknown:
            raise KvwireError(f"paired bootstrap: prompts without a document: {unknown[:5]}")
        lo, hi = cluster_bootstrap_ci(diff, [clusters[k] for k in keys], seed=seed, n_boot=n_boot, level=level)
    return float(diff.mean()), lo, hi


def significance_signs(samples: dict[str, dict[str, float]], *, seed: int, clusters: dict[str, str] | None = None,
                       n_boot: int = 2000, level: float = 0.95) -> tuple[list[str], np.ndarray]:
    """(names, S) with ``S[i, j]`` = +1 where ``samples[j] - samples[i]`` is above 0 with its paired
    interval, -1 where below, 0 where the interval holds 0 (a tie at this sample size)."""
    names = sorted(samples)
    signs = np.zeros((len(names), len(names)), dtype=int)
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            _, lo, hi = paired_bootstrap_ci(samples[names[j]], samples[a], seed=seed + i * len(names) + j,
                                            n_boot=n_boot, level=level, clusters=clusters)
            sign = 1 if lo > 0 else -1 if hi < 0 else 0
            signs[i, j], signs[j, i] = sign, -sign
    return names, signs


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


def pareto_front(ratio: Sequence[float], quality: Sequence[float], *, ratio_rtol: float = 0.0,
                 quality_signs: np.ndarray | None = None) -> np.ndarray:
    """Bool mask of the points no other point beats: higher ratio AND higher quality (both maximized).

    A point is dominated if another is at least as good on both axes and strictly better on one;
    exact duplicates are all kept. ``ratio_rtol``: ratios within this relative distance count as
    equal (two codecs with the same payload layout differ only by their header's few bytes, which
    must not put the worse one on the front). ``quality_signs`` (from :func:`significance_signs`, in
    the points' order): quality is compared only through it, so a difference inside its interval is
    a tie and never puts a point off the front (ratios are exact byte counts and need no interval).
    """
    r = np.asarray(ratio, dtype=float)
    q = np.asarray(quality, dtype=float)
    if r.shape != q.shape:
        raise KvwireError("pareto_front: ratio and quality differ in length")
    if not 0.0 <= ratio_rtol < 1.0:
        raise KvwireError(f"pareto_front: ratio_rtol must be in [0, 1), got {ratio_rtol}")
    if quality_signs is None:
        q_ge, q_gt = q[None, :] >= q[:, None], q[None, :] > q[:, None]
    else:
        s = np.asarray(quality_signs)
        if s.shape != (r.size, r.size):
            raise KvwireError(f"pareto_front: quality_signs is {s.shape}, expected {(r.size, r.size)}")
        q_ge, q_gt = s >= 0, s > 0
    # [i, j]: does point j dominate point i
    ge = (r[None, :] >= r[:, None] * (1.0 - ratio_rtol)) & q_ge
    gt = (r[None, :] > r[:, None] * (1.0 + ratio_rtol)) | q_gt
    return ~(ge & gt).any(axis=1)
