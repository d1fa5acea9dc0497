"""streaming_llm: keep the first ``sinks`` tokens (attention sinks) and the most recent ones.

Follows StreamingLLM -- Xiao, Tian, Chen, Han, Lewis, "Efficient Streaming Language Models with
Attention Sinks", ICLR 2024, arXiv:2309.17453: a few initial tokens soak up attention mass no
matter their content, so a cache of ``sinks`` initial tokens plus a sliding window of recent
tokens keeps the model stable where a pure window collapses.

Faithful: the kept set is exactly the first ``sinks`` tokens plus the most recent
``n - sinks``, with ``n`` the layer budget (``budget``/``keep``, see ``selection``); the paper's
default of 4 sink tokens. Content is never looked at, so no statistics are needed.

Differs: (1) the paper applies the policy while streaming (evict as tokens arrive); here it is
applied once to a finished prefix before the cache crosses the wire, which yields the same set.
(2) StreamingLLM assigns positions *within the cache* (keys re-rotated to contiguous slots) so
it can run past the trained context; we keep the original positions (RoPE stays baked into the
keys, new tokens continue at the original prefix length), as kvpress's StreamingLLMPress does --
our prefixes are inside the context window. (3) If ``n <= sinks`` only the first ``n`` tokens
are kept (sinks take precedence over the window). Selection is per layer (all heads share it),
which for this content-free policy is no difference at all.
"""

from __future__ import annotations

import torch

from ..limits import MAX_TOKENS
from .base import LayerContext, LayerKV, Param
from .registry import register
from .selection import BUDGET_PARAMS, TokenSelectionCodec, edge_mask


@register
class StreamingLLM(TokenSelectionCodec):
    name = "streaming_llm"
    summary = "token dropping: first `sinks` tokens + most recent window (StreamingLLM, ICLR 2024)"
    PARAMS = {
        **BUDGET_PARAMS,
        "sinks": Param(int, 4, "initial attention-sink tokens always kept (within the budget)", minimum=0,
                       maximum=MAX_TOKENS),
    }

    def select(self, kv: LayerKV, ctx: LayerContext, n: int) -> torch.Tensor:
        sinks = min(self.params["sinks"], n)
        return edge_mask(kv.k.shape[1], first=sinks, last=n - sinks)
