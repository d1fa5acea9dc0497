"""snapkv: keep the tokens the last queries (observation window) attend to, plus that window.

Follows SnapKV -- Li, Huang, Yang, Venkitesh, Locatelli, Ye, Cai, Lewis, Chen, "SnapKV: LLM Knows
What You are Looking for Before Generation", NeurIPS 2024, arXiv:2404.14469: the attention that the
last ``obs_window`` prompt queries pay to earlier tokens predicts what generation will attend to;
votes are pooled over neighbouring tokens (``kernel_size``) so kept tokens come with context, the
top prefix tokens are kept and the observation window itself is always kept.

Faithful: vote of prefix token j = sum over the last ``w = min(obs_window, seq)`` queries of their
softmax attention on j (``obs_attn`` from extraction, ``kvwire.kv.prefill_stats``; the softmax runs
over the whole causal prefix, as in SnapKV), 1-D pooling with stride 1 and padding
``kernel_size // 2`` (average pooling by default, as the SnapKV code; ``pooling="max"`` available),
then the ``n - w`` best prefix tokens plus the ``w`` window tokens; defaults ``obs_window=32``,
``kernel_size=5``. The budget ``n`` includes the window (SnapKV's ``max_capacity_prompt``).

Differs: (1) SnapKV picks tokens per head; one token set per layer is required here (see
``selection``), so pooled votes are summed over the layer's kv heads, each kv head's vote being
the sum over the query heads that share it (GQA; SnapKV's GQA variants average, same ranking per
kv head). (2) If ``n < w`` only the last ``n`` tokens are kept. (3) ``obs_window`` may not exceed
the number of query rows extracted (``prefill_stats(obs_window=...)``, 32 by default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import CodecError
from ..limits import MAX_TOKENS
from .base import LayerContext, LayerKV, Param
from .registry import register
from .selection import BUDGET_PARAMS, TokenSelectionCodec, edge_mask, stat, top_up

SNAP_PARAMS = {
    "obs_window": Param(int, 32, "observation window: the last queries whose attention votes (always kept)",
                        minimum=1, maximum=MAX_TOKENS),
    "kernel_size": Param(int, 5, "pooling kernel over neighbouring tokens' votes (1 = no pooling)",
                         minimum=1, maximum=255),
    "pooling": Param(str, "avg", "pooling of the votes", choices=("avg", "max")),
}


def window_size(obs_window: int, seq: int) -> int:
    return min(obs_window, seq)


def snap_scores(ctx: LayerContext, codec: str, obs_window: int, kernel_size: int, pooling: str) -> torch.Tensor:
    """Pooled SnapKV votes of the prefix tokens before the observation window: float [seq - w]."""
    obs = stat(ctx, "obs_attn", codec, rows=True)  # [kv_heads, rows, seq]
    seq = ctx.shape[1]
    w = window_size(obs_window, seq)
    if obs.shape[1] < w:
        raise CodecError(f"codec {codec!r}: obs_window={obs_window} needs the attention of the last {w} queries, "
                         f"but layer {ctx.layer}'s obs_attn holds {obs.shape[1]}; lower obs_window or re-extract "
                         f"with attention statistics and obs_window >= {w}")
    prefix = seq - w
    vote = obs[:, -w:, :prefix].sum(dim=1)  # [kv_heads, prefix]
    if prefix and kernel_size > 1:
        pool = F.avg_pool1d if pooling == "avg" else F.max_pool1d
        vote = pool(vote.unsqueeze(1), kernel_size, stride=1, padding=kernel_size // 2)[:, 0, :prefix]
    return vote.sum(dim=0)


def snap_select(ctx: LayerContext, codec: str, n: int, obs_window: int, kernel_size: int,
                pooling: str) -> torch.Tensor:
    seq = ctx.shape[1]
    w = window_size(obs_window, seq)
    scores = snap_scores(ctx, codec, obs_window, kernel_size, pooling)
    full = torch.cat([scores, torch.zeros(w, dtype=scores.dtype)])  # window tokens are forced, never scored
    return top_up(edge_mask(seq, last=min(w, n)), full, n)


@register
class SnapKV(TokenSelectionCodec):
    name = "snapkv"
    summary = "token dropping: pooled attention of the last queries + the observation window (SnapKV, NeurIPS 2024)"
    PARAMS = {**BUDGET_PARAMS, **SNAP_PARAMS}

    def select(self, kv: LayerKV, ctx: LayerContext, n: int) -> torch.Tensor:
        p = self.params
        return snap_select(ctx, self.name, n, p["obs_window"], p["kernel_size"], p["pooling"])
