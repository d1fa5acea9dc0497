"""Paged KV offload: a GPU page pool of fixed size over a pinned host store, reactive LRU and
predictive prefetch, optionally with compressed pages (docs/OFFLOAD.md).

- ``trace``: page-access traces recorded from real models (``record_trace``, ``AccessTrace``);
- ``policy``: which pages a step needs and what the pool does (``plan``: exact hits, fetches,
  prefetches, evictions per step and layer);
- ``replay``: the plan executed on a GPU with real copies and compute of the model's shape
  (trace-driven), or eagerly on the CPU;
- ``simulate``: a discrete-event simulation of the same plan from measured costs (labelled so);
- ``experiment``: the settings, runs and rows of the offload study.
"""

from .policy import MODES, LayerEvent, LayerPager, plan, plan_counts, prediction_accuracy, top_pages
from .trace import BLOCK, AccessTrace, record_trace

__all__ = ["BLOCK", "MODES", "AccessTrace", "LayerEvent", "LayerPager", "plan", "plan_counts",
           "prediction_accuracy", "record_trace", "top_pages"]
