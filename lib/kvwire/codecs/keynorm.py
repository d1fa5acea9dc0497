"""keynorm: keep the tokens whose keys have the LOWEST L2 norm, leaving the first layers whole.

Follows Devoto, Zhao, Scardapane, Minervini, "A Simple and Effective L2 Norm-Based Strategy for
KV Cache Compression", EMNLP 2024, arXiv:2406.11430, and the authors' code (github.com/alessiodevoto/
l2compress, ``cache.py``'s ``l2_compress``): a key's L2 norm anti-correlates with the attention it
later receives, so low-norm keys are the ones to keep; no attention scores needed
(FlashAttention-compatible, no statistics from extraction).

What follows the paper and its code:

- the score is the L2 norm of each cached (post-RoPE) key vector, computed in float32; the ``n``
  lowest-scoring tokens of a layer are kept with their values (ties: the earlier token). NVIDIA
  kvpress's ``KnormPress`` (score ``-keys.norm(dim=-1)``) keeps the same tokens;
- the first ``skip_layers`` layers are NOT compressed (every token kept). The paper finds that the
  norm/attention correlation does not hold in the first layers, and the authors' code takes the
  layers to leave alone as ``skip_layers`` (its README's example: ``skip_layers=[0, 1]``); the
  default here is those two layers. ``skip_layers=0`` compresses every layer, as kvpress does and as
  this codec did before. Measured (docs/QUALITY.md, "keynorm against its paper"): on SmolLM2 and
  Gemma-3 the two whole layers change token agreement by less than its noise, cost 6-10 % of the
  ratio, and at an equal total ratio do worse than compressing every layer;
- no token is protected: no attention sink, no recent window (neither the paper's code nor kvpress
  keeps one). The rule keeps the sink where its key norm is low (SmolLM2's first token has the lowest
  key norm in its layers 12-29);
- ``order="highest"`` keeps the HIGHEST norms instead: the descending-sort ablation of the authors'
  evaluation script (``--sort_descending``), a naive baseline, not the method.

What differs, and why:

- the paper (and kvpress) ranks tokens per kv head; one token set per layer is required here (the
  injected cache has one sequence axis per layer, see ``selection``), so the score of a token is the
  SUM of its key norms over the layer's kv heads;
- ``budget`` applies to each compressed layer (the paper's ``keep_ratio``), so skipped layers make
  the cache larger than ``1 / budget`` suggests: the measured ratio says by how much (budget 0.5:
  1.87x on SmolLM2's 30 layers, 1.80x on Gemma-3's 18). The count is ``floor(budget * seq)``
  (kvpress's rounding; the authors' code rounds up);
- a finished prefill cache is compressed once; the authors' scripts compress during decoding and
  only once the cache holds ``prune_after`` tokens (1000 to 2048 there); here every compressed layer
  is compressed whatever its length.
"""

from __future__ import annotations

import torch

from ..limits import MAX_LAYERS
from .base import LayerContext, LayerKV, Param
from .registry import register
from .selection import BUDGET_PARAMS, TokenSelectionCodec, top_up

ORDERS = ("lowest", "highest")


@register
class KeyNorm(TokenSelectionCodec):
    name = "keynorm"
    summary = "token dropping: keep the lowest key-L2-norm tokens, first layers whole (Devoto et al., EMNLP 2024)"
    PARAMS = {
        **BUDGET_PARAMS,
        "skip_layers": Param(int, 2, "the first layers kept whole (the paper: no norm/attention correlation there; "
                             "its code's skip_layers=[0, 1]); 0 = compress every layer", minimum=0,
                             maximum=MAX_LAYERS),
        "order": Param(str, "lowest", "which key norms are kept: lowest (the paper) or highest (its "
                       "descending-sort ablation, a naive baseline)", choices=ORDERS),
    }

    def budget_for(self, ctx: LayerContext) -> int:
        if ctx.layer < self.params["skip_layers"]:
            return ctx.shape[1]  # a skipped layer keeps every token
        return super().budget_for(ctx)

    def select(self, kv: LayerKV, ctx: LayerContext, n: int) -> torch.Tensor:
        norms = kv.k.float().norm(dim=-1).sum(dim=0)  # [seq]: per-head L2 norms summed over kv heads
        scores = -norms if self.params["order"] == "lowest" else norms
        return top_up(torch.zeros_like(norms, dtype=torch.bool), scores, n)
