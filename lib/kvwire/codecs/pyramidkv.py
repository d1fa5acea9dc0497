"""pyramidkv: SnapKV-style selection with per-layer budgets that shrink with depth.

Follows PyramidKV -- Cai, Zhang, Gao, Liu, Liu, Lu, Xiong, Dong, Chang, Hu, Xiao, "PyramidKV:
Dynamic KV Cache Compression based on Pyramidal Information Funneling", arXiv:2406.02069:
attention is spread out in lower layers and concentrated in higher ones, so lower layers get
larger caches and higher layers smaller ones, at the same total; within a layer tokens are chosen
as in SnapKV (attention of the last queries, pooled) and the observation window is always kept.

Faithful: the budget schedule of the PyramidKV code (KVCache-Factory, as kvpress uses it): with
``s = n - w`` selectable tokens per layer under a uniform budget ``n`` (window ``w`` excluded),
the top layer gets ``s / beta`` and the bottom ``2s - s / beta`` (capped at ``seq - w``, the
top then raised so the mean stays ``s``), layers in between on the arithmetic line; ``beta=20``.
Per-layer budgets are rounded down and the remainder given, one token each, to the lowest layers
with room, so budgets never increase with depth and their sum is EXACTLY ``n_layers * n``, the
uniform budget's total. Token scoring is ``snapkv``'s (same defaults).

Differs: (1) per-layer, not per-head selection (see ``selection`` and ``snapkv``). (2) The
reference code falls back to SnapKV's uniform budget when its shape checks fail (e.g. when the
smallest budget is below the window size); here the pyramid always applies, the window is kept
in every layer on top of its share. (3) If ``n <= w`` every layer keeps its last ``n`` tokens.
Layers keep different numbers of tokens; re-injection masks each layer by its own kept positions
(``kvwire.kv``), which the tests check against a manual attention computation.

Layers of different lengths (window-trimmed sliding layers, ``kvwire.kv``: Gemma-3 at 2048 tokens
has 15 layers of 511 tokens and 3 of 2048): the schedule above needs one ``seq`` and one uniform
budget ``n``, so it runs within each group of layers of one shape (``shape_groups``), over that
group's layers in depth order -- each group keeps exactly its uniform total, lower layers of a group
get more than higher ones, and no layer's budget exceeds its length. With one shape (every model
without sliding windows) that is the whole cache, as before.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Sequence

import torch

from ..limits import MAX_TOKENS
from .base import LayerContext, LayerKV, Param
from .registry import register
from .selection import BUDGET_PARAMS, TokenSelectionCodec, n_keep
from .snapkv import SNAP_PARAMS, snap_select, window_size


def pyramid_budgets(n_layers: int, seq: int, n: int, window: int, beta: int) -> list[int]:
    """Tokens kept by each layer (window included): non-increasing with depth, summing to ``n_layers * n``."""
    w = min(window_size(window, seq), n)
    s = n - w  # selectable tokens per layer under the uniform budget
    room = seq - w
    if s == 0 or n_layers == 1:
        return [n] * n_layers
    lo = Fraction(s, beta)
    hi = 2 * s - lo
    if hi > room:
        hi = Fraction(room)
        lo = 2 * s - hi
    step = (hi - lo) / (n_layers - 1)
    ideal = [hi - i * step for i in range(n_layers)]  # exact arithmetic line, sums to n_layers * s
    base = [int(a) for a in ideal]  # floor (all >= 0)
    left = n_layers * s - sum(base)
    out = []
    for b in base:  # the rounding remainder goes to the lowest layers with room, one token each
        extra = 1 if left > 0 and b < room else 0
        left -= extra
        out.append(w + b + extra)
    return out


def shape_groups(shapes: Sequence[tuple[int, int, int]]) -> dict[tuple[int, int, int], list[int]]:
    """The layers of each shape, in depth order (``{shape: [layer, ...]}``)."""
    groups: dict[tuple[int, int, int], list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(tuple(int(x) for x in shape), []).append(i)
    return groups


@register
class PyramidKV(TokenSelectionCodec):
    name = "pyramidkv"
    summary = "token dropping: SnapKV scoring with per-layer budgets shrinking with depth (PyramidKV)"
    PARAMS = {
        **BUDGET_PARAMS, **SNAP_PARAMS,
        "beta": Param(int, 20, "pyramid steepness: the top layer gets 1/beta of the mean selectable budget",
                      minimum=1, maximum=MAX_TOKENS),
    }

    def budget_for(self, ctx: LayerContext) -> int:
        """Layer ``ctx.layer``'s budget: the pyramid over the layers of its length (``shape_groups``)."""
        p = self.params
        seq = ctx.shape[1]
        n = n_keep(seq, p["budget"], p["keep"])
        group = shape_groups(ctx.cache_shapes)[tuple(ctx.shape)]
        return pyramid_budgets(len(group), seq, n, p["obs_window"], p["beta"])[group.index(ctx.layer)]

    def select(self, kv: LayerKV, ctx: LayerContext, n: int) -> torch.Tensor:
        p = self.params
        return snap_select(ctx, self.name, n, p["obs_window"], p["kernel_size"], p["pooling"])
