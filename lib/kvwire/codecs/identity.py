"""identity: the raw K and V bytes, unchanged. The baseline every ratio is measured against."""

from __future__ import annotations

from .base import (Buffer, LayerContext, LayerKV, TensorCodec, check_layer, section_header, tensor_from, tensor_view,
                   unpack_sections)
from .registry import register


@register
class Identity(TensorCodec):
    """Sends K and V as they are (native dtype). Decode is bit-exact."""

    name = "identity"
    lossless = True
    summary = "raw K and V in their native dtype (bit-exact)"
    accepts_views = True

    def encode_layer(self, kv: LayerKV, ctx: LayerContext) -> bytes:
        return b"".join(self.encode_parts(kv, ctx))

    def encode_parts(self, kv: LayerKV, ctx: LayerContext) -> list[Buffer]:
        """``pack_sections([K bytes, V bytes])`` as the section table and views of K's and V's memory."""
        check_layer(kv, ctx)
        k, v = tensor_view(kv.k), tensor_view(kv.v)
        return [section_header([k.nbytes, v.nbytes]), k, v]

    def decode_layer(self, payload: Buffer, ctx: LayerContext) -> LayerKV:
        # one copy of each byte: from the payload (a view into the container) into the new tensors
        k_buf, v_buf = unpack_sections(payload, 2, self.name)
        return LayerKV(tensor_from(k_buf, ctx.dtype, ctx.shape), tensor_from(v_buf, ctx.dtype, ctx.shape))
