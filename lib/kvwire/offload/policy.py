"""Which pages each decode step needs, and what a GPU page pool of fixed size does about it.

Pages are ``page_size`` tokens of one layer's K and V. A decode step attends to the ``k`` pages
of the prompt with the most attention mass (sparse top-k attention at a token budget, as Quest and
InfiniGen do) plus the recent tail, which never leaves the GPU. Each layer owns ``slots`` GPU page
slots; every other page lives in pinned host memory and is copied in when needed.

- reactive: a needed page that is not resident is fetched on demand (the step stalls on it); the
  least recently used unprotected page gives up its slot;
- predictive: after layer ``l`` of step ``t`` computes, the top ``prefetch_k`` pages of step ``t``'s
  attention are prefetched for step ``t + 1`` (on a copy stream, overlapped with the compute that
  follows); the first step is seeded from the prompt's last query (trace row 0). Misses are still
  fetched on demand.

``plan`` turns a trace into the exact per-(step, layer) list of hits, fetches, prefetches and
evictions that the GPU replay executes and the simulation times; it is pure Python and tested with
exact counts on scripted traces.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ..errors import OffloadError

MODES = ("all_gpu", "reactive", "predictive")


def top_pages(mass: np.ndarray, k: int) -> tuple[int, ...]:
    """The ``k`` pages with the most mass (positive mass only; ties go to the earlier page), best first."""
    if k < 1:
        raise OffloadError(f"a top-k page set needs k >= 1, got {k}")
    order = np.argsort(-mass, kind="stable")[:k]
    return tuple(int(p) for p in order if mass[p] > 0)


@dataclass
class LayerEvent:
    """One (step, layer): step 0 holds only the initial prefetches seeded from the prompt's last query."""

    step: int
    layer: int
    needed: tuple = ()
    hits: int = 0
    prefetch_hits: int = 0  # hits on pages a prefetch brought in and nothing had used yet
    fetches: list = field(default_factory=list)  # demand fetches (page, slot), before the compute
    prefetches: list = field(default_factory=list)  # (page, slot), issued after the compute
    wasted: int = 0  # prefetched pages evicted before any step used them


class LayerPager:
    """One layer's GPU page slots: an LRU map page -> slot."""

    def __init__(self, slots: int):
        if slots < 1:
            raise OffloadError(f"a page pool needs >= 1 slot, got {slots}")
        self.slots = slots
        self.resident: OrderedDict[int, int] = OrderedDict()  # least recently used first
        self.free = list(range(slots - 1, -1, -1))  # pop() hands out slot 0 first
        self.unused_prefetch: set[int] = set()

    def _slot_for(self, protect: set) -> tuple[int, bool]:
        """A free slot, else the LRU page's outside ``protect``; also whether an unused prefetch was lost."""
        if self.free:
            return self.free.pop(), False
        for page in self.resident:
            if page not in protect:
                slot = self.resident.pop(page)
                wasted = page in self.unused_prefetch
                self.unused_prefetch.discard(page)
                return slot, wasted
        raise OffloadError(f"all {self.slots} slots hold protected pages: the pool is smaller than the page set")

    def access(self, needed: tuple, event: LayerEvent) -> None:
        """The step needs ``needed`` resident: count hits, fetch misses, mark all most recently used."""
        if len(needed) > self.slots:
            raise OffloadError(f"a step needs {len(needed)} pages but the layer has {self.slots} slots")
        protect = set(needed)
        event.needed = tuple(needed)
        for page in needed:
            if page in self.resident:
                event.hits += 1
                if page in self.unused_prefetch:
                    event.prefetch_hits += 1
                    self.unused_prefetch.discard(page)
            else:
                slot, wasted = self._slot_for(protect)
                event.wasted += wasted
                self.resident[page] = slot
                event.fetches.append((page, slot))
        for page in reversed(needed):  # best page ends most recent
            self.resident.move_to_end(page)

    def prefetch(self, predicted: tuple, event: LayerEvent) -> None:
        """Bring ``predicted`` in ahead of use (at most ``slots`` of them, best first)."""
        predicted = predicted[: self.slots]
        protect = set(predicted)
        for page in predicted:
            if page not in self.resident:
                slot, wasted = self._slot_for(protect)
                event.wasted += wasted
                self.resident[page] = slot
                self.unused_prefetch.add(page)
                event.prefetches.append((page, slot))
        for page in reversed(predicted):
            self.resident.move_to_end(page)


def plan(page_mass: np.ndarray, mode: str, *, k: int, slots: int, prefetch_k: int | None = None) -> list[LayerEvent]:
    """The events of decode steps 1..N over ``page_mass`` [rows, layers, pages] (row 0: the prompt's
    last query). ``all_gpu`` has every page resident from the start (its events only list what each
    step attends to)."""
    if mode not in MODES:
        raise OffloadError(f"unknown offload mode {mode!r}; known: {', '.join(MODES)}")
    if page_mass.ndim != 3 or page_mass.shape[0] < 2:
        raise OffloadError(f"page_mass must be [rows >= 2, layers, pages], got {list(page_mass.shape)}")
    rows, layers, pages = page_mass.shape
    if mode != "all_gpu" and slots < k:
        raise OffloadError(f"{slots} GPU slots per layer cannot hold the {k} pages a step attends to")
    prefetch_k = k if prefetch_k is None else prefetch_k
    if mode == "predictive" and prefetch_k < 1:
        raise OffloadError(f"prefetch_k must be >= 1, got {prefetch_k}")
    events: list[LayerEvent] = []
    if mode == "all_gpu":
        for t in range(1, rows):
            for layer in range(layers):
                needed = top_pages(page_mass[t, layer], k)
                events.append(LayerEvent(t, layer, needed=needed, hits=len(needed)))
        return events
    pagers = [LayerPager(slots) for _ in range(layers)]
    if mode == "predictive":
        for layer in range(layers):
            ev = LayerEvent(0, layer)
            pagers[layer].prefetch(top_pages(page_mass[0, layer], prefetch_k), ev)
            events.append(ev)
    for t in range(1, rows):
        for layer in range(layers):
            ev = LayerEvent(t, layer)
            pagers[layer].access(top_pages(page_mass[t, layer], k), ev)
            if mode == "predictive" and t + 1 < rows:
                pagers[layer].prefetch(top_pages(page_mass[t, layer], prefetch_k), ev)
            events.append(ev)
    return events


def plan_counts(events: list[LayerEvent]) -> dict:
    """Totals over a plan: needed, hits, fetches, prefetches, prefetch hits, wasted; hit rate and
    prefetch precision (used / issued; pages still unused at the end count as not used)."""
    needed = sum(len(e.needed) for e in events)
    hits = sum(e.hits for e in events)
    prefetches = sum(len(e.prefetches) for e in events)
    used = sum(e.prefetch_hits for e in events)
    return {"needed": needed, "hits": hits, "fetches": sum(len(e.fetches) for e in events),
            "prefetches": prefetches, "prefetch_hits": used, "wasted": sum(e.wasted for e in events),
            "hit_rate": hits / needed if needed else float("nan"),
            "prefetch_precision": used / prefetches if prefetches else float("nan")}


def prediction_accuracy(page_mass: np.ndarray, *, k: int, prefetch_k: int) -> dict:
    """How well step t's top ``prefetch_k`` predicts step t+1's top ``k``, independent of any pool:
    recall over all needed pages, and over newcomers (pages step t did not attend to)."""
    rows, layers, _ = page_mass.shape
    hit = total = new_hit = new_total = 0
    for t in range(1, rows):
        for layer in range(layers):
            needed = set(top_pages(page_mass[t, layer], k))
            predicted = set(top_pages(page_mass[t - 1, layer], prefetch_k))
            newcomers = needed - set(top_pages(page_mass[t - 1, layer], k))
            hit += len(needed & predicted)
            total += len(needed)
            new_hit += len(newcomers & predicted)
            new_total += len(newcomers)
    return {"predict_recall": hit / total if total else float("nan"),
            "newcomer_recall": new_hit / new_total if new_total else float("nan"),
            "newcomers": new_total}


def coverage(page_mass_rows: np.ndarray, tail_mass: np.ndarray, k: int) -> float:
    """Mean attention mass the top-k pages plus the GPU-resident tail capture, over steps 1..N and
    layers: how much of dense attention the budget keeps (1.0 = nothing lost)."""
    rows, layers, _ = page_mass_rows.shape
    kept = []
    for t in range(1, rows):
        for layer in range(layers):
            pages = top_pages(page_mass_rows[t, layer], k)
            kept.append(float(page_mass_rows[t, layer, list(pages)].sum()) + float(tail_mass[t, layer]))
    return float(np.mean(kept))


def issue_order(events: list[LayerEvent], layers: int, *, lookahead: int = 2) -> list[tuple[str, LayerEvent]]:
    """The order one decode host thread issues a plan's work, shared by the replay and the
    simulation: ("compute", e) = wait for e's pages, demand-fetch its misses, run the layer;
    ("prefetch", e) = queue e's prefetches on the copy stream; ("step_end", e) = the LM head after
    e, the step's last layer. The first step's seeded prefetches (step 0) go out ``lookahead`` layers
    ahead of the compute that needs them, so the first layers need not wait for the last ones'."""
    seeded = {e.layer: e for e in events if e.step == 0}
    order: list[tuple[str, LayerEvent]] = [("prefetch", seeded[layer]) for layer in range(min(lookahead, layers))
                                           if layer in seeded]
    for e in events:
        if e.step == 0:
            continue
        if e.step == 1 and e.layer + lookahead in seeded:
            order.append(("prefetch", seeded[e.layer + lookahead]))
        order.append(("compute", e))
        if e.prefetches:
            order.append(("prefetch", e))
        if e.layer == layers - 1:
            order.append(("step_end", e))
    return order
