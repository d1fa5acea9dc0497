"""identity: the raw K and V bytes, unchanged. The baseline every ratio is measured against."""

from __future__ import annotations

from .base import LayerContext, LayerKV, TensorCodec, check_layer, pack_sections, tensor_bytes, tensor_from, unpack_sections
from .registry import register


@register
class Identity(TensorCodec):
    """Sends K and V as they are (native dtype). Decode is bit-exact."""

    name = "identity"
    lossless = True
    summary = "raw K and V in their native dtype (bit-exact)"

    def encode_layer(self, kv: LayerKV, ctx: LayerContext) -> bytes:
        check_layer(kv, ctx)
        return pack_sections([tensor_bytes(kv.k), tensor_bytes(kv.v)])

    def decode_layer(self, payload: bytes, ctx: LayerContext) -> LayerKV:
        k_buf, v_buf = unpack_sections(payload, 2, self.name)
        return LayerKV(tensor_from(k_buf, ctx.dtype, ctx.shape), tensor_from(v_buf, ctx.dtype, ctx.shape))
