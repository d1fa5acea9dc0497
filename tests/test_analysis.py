"""Statistics of the quality study: bootstrap intervals, rank correlation and Pareto fronts."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvwire.analysis import (bootstrap_ci, cluster_bootstrap_ci, paired_bootstrap_ci, pareto_front, ranks,
                             significance_signs, spearman)
from kvwire.errors import KvwireError


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = 0
    for trial in range(200):
        sample = rng.normal(3.0, 2.0, size=40)
        lo, hi = bootstrap_ci(sample, seed=trial, n_boot=1000)
        assert lo <= sample.mean() <= hi
        hits += lo <= 3.0 <= hi
    assert 0.88 <= hits / 200 <= 0.99  # percentile bootstrap at n=40 runs slightly below nominal


def test_bootstrap_is_seeded_and_narrows_with_more_data():
    rng = np.random.default_rng(1)
    small, big = rng.normal(size=20), rng.normal(size=2000)
    assert bootstrap_ci(small, seed=5) == bootstrap_ci(small, seed=5)
    assert bootstrap_ci(small, seed=5) != bootstrap_ci(small, seed=6)
    w_small = np.subtract(*bootstrap_ci(small, seed=0)[::-1])
    w_big = np.subtract(*bootstrap_ci(big, seed=0)[::-1])
    assert w_big < w_small / 5
    assert bootstrap_ci([2.0, 2.0, 2.0], seed=0) == (2.0, 2.0)
    for bad in ([], [1.0, float("nan")]):
        with pytest.raises(KvwireError):
            bootstrap_ci(bad, seed=0)


def test_paired_bootstrap_removes_shared_prompt_spread():
    rng = np.random.default_rng(2)
    difficulty = rng.normal(0, 5.0, size=50)  # large spread shared by both sides
    base = {f"p{i}": float(d) for i, d in enumerate(difficulty)}
    codec = {k: v + 0.3 + float(rng.normal(0, 0.05)) for k, v in base.items()}
    mean, lo, hi = paired_bootstrap_ci(codec, base, seed=0)
    assert 0.25 < lo <= mean <= hi < 0.35  # unpaired, the spread (sd 5) would swamp a 0.3 shift
    assert paired_bootstrap_ci(base, base, seed=0) == (0.0, 0.0, 0.0)
    with pytest.raises(KvwireError, match="one side only"):
        paired_bootstrap_ci({"a": 1.0}, {"b": 1.0}, seed=0)


def test_spearman_matches_definitions():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert spearman(x, [v ** 3 for v in x]) == pytest.approx(1.0)
    assert spearman(x, [-v for v in x]) == pytest.approx(-1.0)
    assert np.isnan(spearman(x, [1.0] * 5))
    assert list(ranks([10.0, 20.0, 20.0, 5.0])) == [2.0, 3.5, 3.5, 1.0]
    # textbook value: d = rank differences, no ties -> 1 - 6 sum d^2 / (n (n^2 - 1))
    a, b = [1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5]
    assert spearman(a, b) == pytest.approx(1 - 6 * 6 / (6 * 35))
    with pytest.raises(KvwireError):
        spearman([1, 2], [1])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 1)), min_size=1, max_size=30))
def test_pareto_front_properties(points):
    r = [p[0] for p in points]
    q = [p[1] for p in points]
    front = pareto_front(r, q)
    assert front.any()  # the best-ratio point among the best-quality ones is never dominated
    for i in range(len(points)):
        dominated = any(r[j] >= r[i] and q[j] >= q[i] and (r[j] > r[i] or q[j] > q[i]) for j in range(len(points)))
        assert front[i] == (not dominated)


def test_pareto_front_example():
    # identity (1, 1.0), int8 (2, 0.99), int4 (3.5, 0.94), a bad codec (3, 0.5), kivi2 (3.6, 0.8)
    mask = pareto_front([1, 2, 3.5, 3, 3.6], [1.0, 0.99, 0.94, 0.5, 0.8])
    assert list(mask) == [True, True, True, False, True]


def test_pareto_front_ratio_tolerance():
    # int8 and fp8 on Gemma-3: one payload layout, header bytes apart; the worse one is not on the front
    r, q = [1.9841124, 1.9841075, 3.5], [0.974, 0.978, 0.6]
    assert list(pareto_front(r, q)) == [True, True, True]
    assert list(pareto_front(r, q, ratio_rtol=1e-3)) == [False, True, True]
    # within the tolerance and equal quality: both stay (neither is strictly better)
    assert list(pareto_front([2.0, 2.001], [0.9, 0.9], ratio_rtol=1e-3)) == [True, True]
    # beyond the tolerance the larger ratio still counts
    assert list(pareto_front([2.0, 2.1], [0.9, 0.9], ratio_rtol=1e-3)) == [False, True]
    with pytest.raises(KvwireError):
        pareto_front([1.0], [1.0], ratio_rtol=1.0)


# ----------------------------------------------------------------------------- cluster bootstrap


def test_cluster_bootstrap_with_singleton_clusters_is_the_plain_bootstrap():
    x = np.random.default_rng(3).normal(size=40)
    assert cluster_bootstrap_ci(x, [f"d{i}" for i in range(40)], seed=9) == bootstrap_ci(x, seed=9)


def test_cluster_bootstrap_known_answer_for_nested_prefixes():
    # 10 documents x 4 prompts whose values are equal within a document (4 nested prefixes of one text
    # that behave alike): the independent sample is the 10 documents, so the interval is the bootstrap
    # interval of the 10 document means -- draw for draw -- and wider than the 40-prompt one.
    doc_means = np.random.default_rng(5).normal(size=10)
    values = np.repeat(doc_means, 4)
    docs = np.repeat([f"doc{i}" for i in range(10)], 4)
    clustered = cluster_bootstrap_ci(values, list(docs), seed=2, n_boot=4000)
    assert clustered == pytest.approx(bootstrap_ci(doc_means, seed=2, n_boot=4000))
    naive = bootstrap_ci(values, seed=2, n_boot=4000)
    assert (clustered[1] - clustered[0]) > 1.6 * (naive[1] - naive[0])  # sqrt(4) = 2 in expectation


def test_cluster_bootstrap_weights_unequal_clusters_by_their_values():
    # the point estimate a resample targets is the mean over values, not over cluster means
    values, docs = [0.0, 0.0, 0.0, 1.0], ["a", "a", "a", "b"]
    lo, hi = cluster_bootstrap_ci(values, docs, seed=0, n_boot=4000)
    assert lo == 0.0 and hi == 1.0  # resamples: {a,a} -> 0, {b,b} -> 1, {a,b} -> 1/4
    with pytest.raises(KvwireError, match="4 values but 3 cluster labels"):
        cluster_bootstrap_ci(values, docs[:3], seed=0)


def test_paired_bootstrap_by_document_and_signs():
    rng = np.random.default_rng(11)
    base = {f"p{i}": float(v) for i, v in enumerate(rng.normal(size=60))}
    better = {k: v + 0.5 + 0.1 * rng.normal() for k, v in base.items()}
    same = {k: v + 0.1 * rng.normal() for k, v in base.items()}
    docs = {k: f"doc{int(k[1:]) // 3}" for k in base}
    diff, lo, hi = paired_bootstrap_ci(better, base, seed=1, clusters=docs)
    assert lo < diff < hi and lo > 0.4
    with pytest.raises(KvwireError, match="without a document"):
        paired_bootstrap_ci(better, base, seed=1, clusters={})
    names, signs = significance_signs({"base": base, "better": better, "same": same}, seed=4, clusters=docs)
    assert names == ["base", "better", "same"]
    assert signs[0, 1] == 1 and signs[1, 0] == -1 and signs[2, 1] == 1 and signs[0, 2] == 0


def test_pareto_front_counts_only_significant_quality_differences():
    ratio, quality = [2.0, 4.0], [0.99, 0.98]  # the 4x codec looks a hair worse
    assert pareto_front(ratio, quality).tolist() == [True, True]
    tie = np.zeros((2, 2), dtype=int)  # the hair is inside its interval: 4x at equal quality wins
    assert pareto_front(ratio, quality, quality_signs=tie).tolist() == [False, True]
    worse = np.array([[0, -1], [1, 0]])  # significantly worse: both stay
    assert pareto_front(ratio, quality, quality_signs=worse).tolist() == [True, True]
