"""The offload study's settings and the per-(model, context, mode) rows both the GPU replay and the
simulation produce, so that their tables line up column for column."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import OffloadError
from .policy import plan, plan_counts, prediction_accuracy, coverage
from .trace import BLOCK, AccessTrace

# (label, pool policy, codec on offloaded pages)
MODE_SPECS = {
    "all_gpu": ("all_gpu", None),
    "reactive": ("reactive", None),
    "predictive": ("predictive", None),
    "predictive_int8": ("predictive", "int8"),
}
KV_BYTES = 2  # bf16 pages
WORKFLOW_KEYS = ("dataset", "calibration", "gpu_table")  # config offload: keys the workflow, not the study, reads


@dataclass(frozen=True)
class OffloadSettings:
    """Config ``offload:`` (config/README.md documents every key)."""

    contexts: tuple = (1024, 2048, 4096, 8192, 16384, 32768)
    decode_tokens: int = 32
    page_size: int = 32
    budget_tokens: int = 512  # tokens of the prompt each step attends to (top-k pages)
    prefetch_tokens: int = 1024  # tokens the predictor prefetches per layer (top pages of this step)
    gpu_tokens: int = 2048  # GPU pool per layer, tokens
    modes: tuple = tuple(MODE_SPECS)
    repeats: int = 9
    gpu_kv_mib: float = 1024.0  # the GPU memory a deployment gives one sequence's KV (largest-context column)
    host_kv_mib: float = 65536.0  # pinned host memory for offloaded pages
    chunk: int = 2048  # prefill chunk of the trace recorder

    def __post_init__(self):
        if self.page_size < BLOCK or self.page_size % BLOCK:
            raise OffloadError(f"offload.page_size must be a multiple of {BLOCK}, got {self.page_size}")
        for key in ("budget_tokens", "prefetch_tokens", "gpu_tokens"):
            value = getattr(self, key)
            if value < self.page_size or value % self.page_size:
                raise OffloadError(f"offload.{key} must be a positive multiple of page_size ({self.page_size}), got {value}")
        if self.gpu_tokens < self.budget_tokens:
            raise OffloadError(f"offload.gpu_tokens ({self.gpu_tokens}) must hold budget_tokens ({self.budget_tokens})")
        unknown = [m for m in self.modes if m not in MODE_SPECS]
        if unknown:
            raise OffloadError(f"unknown offload mode(s) {unknown}; known: {', '.join(MODE_SPECS)}")
        if not self.contexts or min(self.contexts) <= self.budget_tokens:
            raise OffloadError(f"offload.contexts must all exceed budget_tokens ({self.budget_tokens}): {self.contexts}")

    @classmethod
    def from_config(cls, cfg: dict | None) -> "OffloadSettings":
        cfg = {k: v for k, v in (cfg or {}).items() if k not in WORKFLOW_KEYS}
        unknown = sorted(set(cfg) - set(cls.__dataclass_fields__))
        if unknown:
            raise OffloadError(f"unknown offload config key(s) {unknown}")
        for key in ("contexts", "modes"):
            if key in cfg:
                cfg[key] = tuple(cfg[key])
        return cls(**cfg)

    @property
    def k(self) -> int:
        return self.budget_tokens // self.page_size

    @property
    def prefetch_k(self) -> int:
        return self.prefetch_tokens // self.page_size

    @property
    def slots(self) -> int:
        return self.gpu_tokens // self.page_size

    def contexts_for(self, max_positions: int) -> list[int]:
        """The configured contexts a model can decode ``decode_tokens`` past; one longer than that
        becomes the longest that fits (so every model reaches its own limit), then duplicates go."""
        limit = max_positions - self.decode_tokens
        out = sorted({min(c, limit) for c in self.contexts if min(c, limit) > self.budget_tokens})
        if not out:
            raise OffloadError(f"no offload context fits {max_positions} positions with {self.decode_tokens} decode tokens")
        return out


def kv_bytes_per_token(shape: dict) -> int:
    return shape["layers"] * 2 * shape["kv_heads"] * shape["head_dim"] * KV_BYTES


def largest_context(shape: dict, mode: str, s: OffloadSettings, *, compression: float = 1.0) -> int:
    """The longest context whose KV fits the memory budgets: all_gpu needs it all in ``gpu_kv_mib``;
    the offload modes need the pool (fixed) on the GPU and the (compressed) pages in ``host_kv_mib``."""
    per_token = kv_bytes_per_token(shape)
    gpu = s.gpu_kv_mib * 2**20
    if mode == "all_gpu":
        return int(gpu // per_token)
    pool = s.gpu_tokens * per_token + s.decode_tokens * per_token
    if pool > gpu:
        return 0
    return int(s.host_kv_mib * 2**20 * compression // per_token)


def plan_for(trace: AccessTrace, mode: str, s: OffloadSettings):
    policy, codec = MODE_SPECS[mode]
    pm = trace.page_mass(s.page_size)
    slots = pm.shape[2] if policy == "all_gpu" else s.slots
    return plan(pm, policy, k=s.k, slots=slots, prefetch_k=s.prefetch_k), policy, codec, slots


def trace_row(trace: AccessTrace, mode: str, s: OffloadSettings, events) -> dict:
    """The columns that come from the plan alone (identical in the replay and the simulation)."""
    pm = trace.page_mass(s.page_size)
    counts = plan_counts(events)
    acc = prediction_accuracy(pm, k=s.k, prefetch_k=s.prefetch_k)
    policy, codec = MODE_SPECS[mode]
    return {"model": trace.model, "context": trace.context, "mode": mode, "policy": policy, "codec": codec or "none",
            "page_size": s.page_size, "budget_tokens": s.budget_tokens, "gpu_tokens": s.gpu_tokens,
            "prefetch_tokens": s.prefetch_tokens if policy == "predictive" else 0,
            "decode_tokens": trace.steps, "layers": trace.layers, "pages": pm.shape[2],
            "needed": counts["needed"], "hits": counts["hits"], "fetches": counts["fetches"],
            "prefetches": counts["prefetches"], "prefetch_hits": counts["prefetch_hits"],
            "wasted_prefetches": counts["wasted"], "hit_rate": counts["hit_rate"],
            "prefetch_precision": counts["prefetch_precision"],
            "predict_recall": acc["predict_recall"] if policy == "predictive" else math.nan,
            "newcomer_recall": acc["newcomer_recall"] if policy == "predictive" else math.nan,
            "coverage": coverage(pm, trace.tail_mass(s.page_size), s.k)}


def stall_columns(rows: list[dict]) -> None:
    """Stall % against the all_gpu run of the same (model, context) and what mispredictions cost:
    stall_pct = 1 - tpot(all_gpu) / tpot(mode); wasted bytes = unused prefetches x page bytes."""
    base = {(r["model"], r["context"]): r for r in rows if r["mode"] == "all_gpu"}
    for r in rows:
        b = base.get((r["model"], r["context"]))
        r["stall_pct"] = (100 * max(0.0, 1 - b["tpot_p50_ms"] / r["tpot_p50_ms"])) if b else math.nan
        r["wasted_mib"] = r["wasted_prefetches"] * r["wire_bytes_per_page"] / 2**20


def page_wire_bytes(shape: dict, page_size: int, codec: str | None) -> int:
    """Bytes one page of one layer moves: raw bf16 K and V, or the codec's payload for a page (the
    layout the Triton kernel writes, byte for byte the CPU codec's ``encode_layer``)."""
    if codec is None:
        return 2 * shape["kv_heads"] * page_size * shape["head_dim"] * KV_BYTES
    from ..kernels.token.kernel import payload_buffer

    return payload_buffer(codec, (1, 2, shape["kv_heads"], page_size, shape["head_dim"]), "cpu").numel()


def summarize(values) -> dict:
    arr = np.asarray(values, dtype=float)
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99))}
