"""h2o: keep the heavy hitters (most accumulated attention) plus a window of recent tokens.

Follows H2O -- Zhang, Sheng, Zhou, Chen, Zheng, Cai, Song, Tian, Re, Barrett, Wang, Chen,
"H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models",
NeurIPS 2023, arXiv:2306.14048: a small set of tokens gathers most of the attention; keeping those
"heavy hitters" by their accumulated attention score, together with the most recent tokens,
preserves quality at a fraction of the cache.

Faithful: score = accumulated attention each token received, i.e. the sum over all prefix
queries of their softmax attention probability on that token (``attn_sum`` from extraction,
``kvwire.kv.prefill_stats``); the budget is split between recent tokens and heavy hitters,
half and half by default as in the paper's experiments (``recent_ratio``); heavy hitters are the
highest-scoring tokens outside the recent window.

Differs: (1) H2O evicts greedily one token per decoding step using the scores accumulated so
far; here the whole prefix is scored at once with every prefix query (one-shot, as H2O's own
prompt-phase selection and kvpress's ObservedAttentionPress do), since the cache is compressed
once, before it crosses the wire. The raw sum is used (no normalisation by how many queries
could see a token), so early tokens are favoured exactly as in H2O's accumulation. (2) H2O keeps
heavy hitters per head; here one set per layer (see ``selection``): the score is summed over
the layer's kv heads, each kv head's score already being the sum over the query heads that
share it (GQA).
"""

from __future__ import annotations

import math

import torch

from .base import LayerContext, LayerKV, Param
from .registry import register
from .selection import BUDGET_PARAMS, TokenSelectionCodec, edge_mask, stat, top_up


@register
class H2O(TokenSelectionCodec):
    name = "h2o"
    summary = "token dropping: heavy hitters by accumulated attention + recent window (H2O, NeurIPS 2023)"
    PARAMS = {
        **BUDGET_PARAMS,
        "recent_ratio": Param(float, 0.5, "share of the kept tokens reserved for the most recent ones",
                              minimum=0.0, maximum=1.0),
    }

    def select(self, kv: LayerKV, ctx: LayerContext, n: int) -> torch.Tensor:
        scores = stat(ctx, "attn_sum", self.name).sum(dim=0)  # [seq], summed over kv heads
        recent = min(n, math.floor(n * self.params["recent_ratio"] + 0.5))
        return top_up(edge_mask(kv.k.shape[1], last=recent), scores, n)
