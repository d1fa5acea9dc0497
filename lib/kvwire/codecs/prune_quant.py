"""prune_quant: a prune -> quantize cascade -- a token-selection policy drops tokens, a quantizer encodes the rest.

Token dropping and quantization are orthogonal and multiply: keeping a fraction ``b`` of the tokens
at ``q`` bits per element costs about ``b * q / 16`` of a 16-bit cache. The components are kvwire's
own codecs, each following its paper (StreamingLLM arXiv 2309.17453, H2O arXiv 2306.14048, SnapKV
arXiv 2404.14469, PyramidKV arXiv 2406.02069, key-norm arXiv 2406.11430; int8/int4, KIVI arXiv
2402.02750, FP8 arXiv 2209.05433). The closest published relative of the combination is MiKV
(Yang et al., "No Token Left Behind: Reliable KV Cache Compression via Importance-Aware Mixed
Precision Quantization", arXiv 2402.18096), which keeps the tokens an eviction policy would drop at
low precision and the important ones at higher precision; unlike MiKV the tokens this codec drops
are gone (no low-precision copy) and the kept ones all share one quantizer. The cascade itself
is this project's composition, not a scheme from one paper.

- ``policy`` chooses the kept tokens: ``streaming_llm`` (default; content-free, needs no
  statistics), ``h2o``, ``snapkv``, ``pyramidkv`` or ``keynorm``, with their own papers' rules and
  deviations (see those modules). ``budget`` / ``keep`` mean what they mean there
  (``selection.BUDGET_PARAMS``; PyramidKV's per-layer budgets apply); ``policy_params`` holds the
  policy's other parameters (``{"sinks": 4}``, ``{"obs_window": 16}``, ...), checked by the policy.
- ``quant`` encodes the kept tokens: ``int8``, ``int4`` (default), ``kivi2``, ``kivi4``,
  ``fp8_e4m3``, ``fp8_e5m2`` or ``k8v4``, with ``quant_params`` checked by that quantizer. It sees
  the kept tokens as a dense layer of ``n`` tokens (positions are not its business), so per-channel
  scales, KIVI's token groups and its residual window all run over the kept tokens only.

Faithful (to the components): selection is exactly the policy codec's (the same ``budget_for`` and
``select``: the kept positions equal what the policy alone keeps) and the kept tokens decode to
exactly what the quantizer alone yields for them, so the error on kept tokens is the quantizer's.
Differs from MiKV: no low-precision copy of dropped tokens, no importance-dependent precision, no
outlier-aware quantization; selection runs once on the full-precision cache before quantization
(scores never see quantization error).

Wire layout (``pack_sections``, 2 sections): the 1-bit keep mask over the layer's ``seq`` tokens
(``bitpack.pack(keep, 1)``, ``ceil(seq / 8)`` bytes, padding bits zero -- the ``selection`` layout),
then the quantizer's own payload for the kept layer of shape (kv_heads, n, head_dim), ``n`` being the
mask's popcount. Decode returns the kept K/V in the cache dtype with their original positions.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import CodecError
from .base import LayerContext, LayerKV, Param, TensorCodec, pack_sections, unpack_sections
from .registry import TENSOR_CODECS, register
from .selection import BUDGET_PARAMS, TokenSelectionCodec, pack_keep_mask, select_tokens, unpack_keep_mask

POLICIES = ("streaming_llm", "h2o", "snapkv", "pyramidkv", "keynorm")
QUANTIZERS = ("int8", "int4", "kivi2", "kivi4", "fp8_e4m3", "fp8_e5m2", "k8v4")


def _stage(role: str, name: str, params: dict[str, Any]) -> TensorCodec:
    cls = TENSOR_CODECS.get(name)
    if cls is None:  # a choice whose module is not registered (never with the stock codec set)
        raise CodecError(f"codec 'prune_quant': {role} codec {name!r} is not registered")
    try:
        return cls(**params)
    except CodecError as exc:
        raise CodecError(f"codec 'prune_quant': {role}_params for {name!r}: {exc}") from exc


@register
class PruneQuant(TensorCodec):
    name = "prune_quant"
    summary = "cascade: a token-selection policy drops tokens, then a quantizer encodes the kept ones"
    PARAMS = {
        "policy": Param(str, "streaming_llm", "token-selection codec choosing the kept tokens", choices=POLICIES),
        **BUDGET_PARAMS,
        "policy_params": Param(dict, {}, "the policy's other parameters (e.g. {\"sinks\": 4}); budget/keep are "
                               "set above"),
        "quant": Param(str, "int4", "quantizer encoding the kept tokens", choices=QUANTIZERS),
        "quant_params": Param(dict, {}, "the quantizer's parameters (e.g. {\"granularity\": \"group\"})"),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self._params
        for key in ("policy_params", "quant_params"):
            bad = sorted(repr(k) for k in p[key] if not isinstance(k, str))
            if bad:
                raise CodecError(f"codec {self.name!r}: {key} keys must be parameter names, got {', '.join(bad)}")
        clash = sorted(set(p["policy_params"]) & set(BUDGET_PARAMS))
        if clash:
            raise CodecError(f"codec {self.name!r}: set {clash} as prune_quant's own parameter(s), "
                             f"not inside policy_params")
        policy = _stage("policy", p["policy"], {**p["policy_params"], "budget": p["budget"], "keep": p["keep"]})
        quant = _stage("quant", p["quant"], dict(p["quant_params"]))
        if not isinstance(policy, TokenSelectionCodec):
            raise CodecError(f"codec {self.name!r}: policy {p['policy']!r} is not a token-selection codec")
        self.policy: TokenSelectionCodec = policy
        self.quant = quant
        # canonical nested params: the values as the stages checked them (e.g. 1 -> 1.0 for a float param)
        for key, stage in (("policy_params", policy), ("quant_params", quant)):
            self._params[key] = {k: stage.PARAMS[k].check(stage.name, k, v) for k, v in p[key].items()}

    @property
    def params(self) -> dict[str, Any]:
        out = dict(self._params)
        out["policy_params"], out["quant_params"] = dict(out["policy_params"]), dict(out["quant_params"])
        return out

    def _kept_ctx(self, ctx: LayerContext, n: int) -> LayerContext:
        h, _, d = ctx.shape
        return LayerContext(layer=ctx.layer, n_layers=ctx.n_layers, dtype=ctx.dtype, shape=(h, n, d))

    def encode_layer(self, kv: LayerKV, ctx: LayerContext) -> bytes:
        keep = select_tokens(self.policy, kv, ctx, self.name)
        seq, n = keep.numel(), int(keep.sum())
        if n == seq:
            kept = LayerKV(kv.k, kv.v)
        else:
            idx = keep.nonzero().squeeze(1)
            kept = LayerKV(kv.k.index_select(1, idx), kv.v.index_select(1, idx))
        payload = self.quant.encode_layer(kept, self._kept_ctx(ctx, n))
        return pack_sections([pack_keep_mask(keep), payload])

    def decode_layer(self, payload: bytes, ctx: LayerContext) -> LayerKV:
        seq = ctx.shape[1]
        mask_b, inner = unpack_sections(payload, 2, self.name)
        positions = unpack_keep_mask(mask_b, seq, self.name)
        n = positions.numel()
        out = self.quant.decode_layer(inner, self._kept_ctx(ctx, n))  # a memoryview: no copy
        return LayerKV(out.k, out.v, positions)
