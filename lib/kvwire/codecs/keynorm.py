"""keynorm: keep the tokens whose keys have the LOWEST L2 norm.

Follows Devoto, Zhao, Scardapane, Minervini, "A Simple and Effective L2 Norm-Based Strategy for
KV Cache Compression", EMNLP 2024, arXiv:2406.11430: a key's L2 norm anti-correlates with the
attention it later receives, so low-norm keys are the ones to keep; no attention scores needed
(FlashAttention-compatible, no statistics from extraction).

Faithful: the score is the L2 norm of each cached (post-RoPE) key vector, computed in float32;
the ``n`` lowest-scoring tokens of the layer are kept with their values (ties: the earlier token).
As in the paper (and kvpress's KnormPress) there is no protected window or sink: the rule alone
decides.

Differs: the paper ranks tokens per head; one token set per layer is required here (the injected
cache has one sequence axis per layer, see ``selection``), so the score of a token is the SUM
of its key norms over the layer's kv heads. Compression is applied to every layer.
"""

from __future__ import annotations

import torch

from .base import LayerContext, LayerKV
from .registry import register
from .selection import BUDGET_PARAMS, TokenSelectionCodec, top_up


@register
class KeyNorm(TokenSelectionCodec):
    name = "keynorm"
    summary = "token dropping: keep the lowest key-L2-norm tokens (Devoto et al., EMNLP 2024)"
    PARAMS = dict(BUDGET_PARAMS)

    def select(self, kv: LayerKV, ctx: LayerContext, n: int) -> torch.Tensor:
        norms = kv.k.float().norm(dim=-1).sum(dim=0)  # [seq]: per-head L2 norms summed over kv heads
        return top_up(torch.zeros_like(norms, dtype=torch.bool), -norms, n)
