"""Paging, LRU and prediction logic on scripted access traces: exact hit / miss / prefetch counts."""

import numpy as np
import pytest

from kvwire.errors import OffloadError
from kvwire.offload.policy import LayerEvent, LayerPager, plan, plan_counts, prediction_accuracy, top_pages


def onehot_rows(rows, pages, layers=1):
    """page_mass where row t puts its mass on the listed pages (descending weights = rank order)."""
    m = np.zeros((len(rows), layers, pages), dtype=np.float32)
    for t, wanted in enumerate(rows):
        for rank, p in enumerate(wanted):
            m[t, :, p] = 1.0 - 0.01 * rank
    return m


def test_top_pages_ranks_by_mass_skips_zero_and_breaks_ties_to_the_earlier_page():
    assert top_pages(np.array([0.1, 0.5, 0.0, 0.5, 0.2]), 3) == (1, 3, 4)
    assert top_pages(np.array([0.0, 0.3, 0.0]), 2) == (1,)
    with pytest.raises(OffloadError, match="k >= 1"):
        top_pages(np.ones(3), 0)


def test_lru_evicts_the_least_recently_used_and_counts_hits_exactly():
    pager = LayerPager(2)
    seq = [(0,), (1,), (0,), (2,), (1,), (0,)]
    fetches, hits = [], 0
    for needed in seq:
        ev = LayerEvent(1, 0)
        pager.access(needed, ev)
        hits += ev.hits
        fetches.append([p for p, _ in ev.fetches])
    # 0 miss, 1 miss, 0 hit, 2 miss (evicts 1), 1 miss (evicts 0), 0 miss (evicts 2)
    assert fetches == [[0], [1], [], [2], [1], [0]]
    assert hits == 1
    assert list(pager.resident) == [1, 0]


def test_slots_are_reused_and_protected_pages_are_never_evicted():
    pager = LayerPager(3)
    ev = LayerEvent(1, 0)
    pager.access((0, 1, 2), ev)
    assert ev.fetches == [(0, 0), (1, 1), (2, 2)]
    ev = LayerEvent(2, 0)
    pager.access((2, 3, 0), ev)  # 1 is the only unprotected page: 3 takes its slot
    assert ev.fetches == [(3, 1)] and ev.hits == 2
    with pytest.raises(OffloadError, match="needs 4 pages but the layer has 3 slots"):
        pager.access((0, 1, 2, 3), LayerEvent(3, 0))


def test_reactive_plan_counts_on_a_drifting_trace():
    # k = 2, slots = 3: the window drifts one page per step
    rows = [(0, 1), (0, 1), (1, 2), (2, 3), (3, 4)]
    pm = onehot_rows(rows, pages=6, layers=2)
    events = plan(pm, "reactive", k=2, slots=3)
    c = plan_counts(events)
    # per layer: step1 2 misses, step2 1 miss (2), step3 1 miss (3), step4 1 miss (4): 5 misses, 3 hits
    assert (c["needed"], c["hits"], c["fetches"], c["prefetches"]) == (16, 6, 10, 0)
    assert c["hit_rate"] == pytest.approx(6 / 16)


def test_predictive_prefetch_turns_predictable_newcomers_into_hits():
    # row t ranks the next step's newcomer third: top-3 prefetch catches it, top-2 attention misses it
    rows = [(0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5)]
    pm = onehot_rows(rows, pages=6)
    reactive = plan_counts(plan(pm, "reactive", k=2, slots=4))
    predictive = plan(pm, "predictive", k=2, slots=4, prefetch_k=3)
    c = plan_counts(predictive)
    assert reactive["fetches"] == 2 + 1 + 1  # steps 1..3: (1,2) cold, then 3, then 4
    assert c["fetches"] == 0 and c["hits"] == c["needed"] == 6
    # initial prefetch of row 0's top-3 (0,1,2), then page 3 after step 1, page 4 after step 2 (none after the last)
    assert [len(e.prefetches) for e in predictive] == [3, 1, 1, 0]
    assert c["prefetches"] == 5 and c["prefetch_hits"] == 4  # page 0 is never used
    assert c["prefetch_precision"] == pytest.approx(4 / 5)


def test_mispredicted_prefetches_are_counted_as_wasted_when_evicted_unused():
    # every row ranks page 4 second but no step ever attends to it (k = 1); 2 slots
    m = np.zeros((4, 1, 6), dtype=np.float32)
    for t, want in enumerate([0, 1, 2, 3]):
        m[t, 0, want] = 1.0
        m[t, 0, 4] = 0.5 if t < 3 else 0.0
    c = plan_counts(plan(m, "predictive", k=1, slots=2, prefetch_k=2))
    # row 0 prefetches (0, 4); step 1 fetches 1 evicting 4 (wasted), prefetches 4 evicting 0 (wasted);
    # step 2 fetches 2 evicting 4 (wasted), prefetches 4 evicting 1 (used: not wasted); step 3 fetches 3
    # evicting 4 (wasted)
    assert (c["hits"], c["fetches"], c["prefetches"], c["prefetch_hits"], c["wasted"]) == (0, 3, 4, 0, 4)
    assert c["prefetch_precision"] == 0.0


def test_all_gpu_plan_has_every_page_resident():
    pm = onehot_rows([(0, 1), (2, 3), (4, 5)], pages=6)
    c = plan_counts(plan(pm, "all_gpu", k=2, slots=1))  # slots are ignored: every page is on the GPU
    assert c["hits"] == c["needed"] == 4 and c["fetches"] == 0


def test_plan_rejects_bad_settings():
    pm = onehot_rows([(0, 1), (1, 2)], pages=4)
    with pytest.raises(OffloadError, match="cannot hold the 2 pages"):
        plan(pm, "reactive", k=2, slots=1)
    with pytest.raises(OffloadError, match="unknown offload mode 'lfu'"):
        plan(pm, "lfu", k=1, slots=2)
    with pytest.raises(OffloadError, match="rows >= 2"):
        plan(pm[:1], "reactive", k=1, slots=2)


def test_prediction_accuracy_counts_recall_and_newcomers():
    rows = [(0, 1, 2), (1, 2, 3), (5, 0, 4)]
    pm = onehot_rows(rows, pages=6)
    acc = prediction_accuracy(pm, k=2, prefetch_k=3)
    # step1 needs {1,2}, predicted {0,1,2}: 2/2, newcomer {2} caught; step2 needs {5,0}, predicted {1,2,3}: 0/2,
    # newcomers {5,0} missed
    assert acc["predict_recall"] == pytest.approx(2 / 4)
    assert acc["newcomers"] == 3 and acc["newcomer_recall"] == pytest.approx(1 / 3)
