"""The per-token codecs' payload layout and which settings the kernels (and the eager baseline) implement."""

from __future__ import annotations

from typing import Any, Mapping

from ...codecs import build
from ...errors import CodecError, KVError
from ..layout import TokenLayout

CODECS = ("int8", "int4", "fp8_e4m3")  # each at its default parameters


def supports(name: str, params: Mapping[str, Any] | None = None) -> bool:
    """Whether ``name`` with ``params`` (the codec's canonical params) has a GPU kernel."""
    if name not in CODECS:
        return False
    return build(name, params).params == build(name).params  # only the defaults, for now


def token_layout(name: str, shape: tuple[int, ...]) -> TokenLayout:
    """The payload layout of codec ``name`` for a cache of ``shape`` [layers, 2, kv_heads, seq, head_dim]."""
    if len(shape) != 5 or shape[1] != 2:
        raise KVError(f"a cache for the GPU codecs is [layers, 2, kv_heads, seq, head_dim], got {list(shape)}")
    _, _, h, s, d = shape
    bits = {"int8": 8, "int4": 4, "fp8_e4m3": 8}[name]
    if bits == 4 and d % 8:
        raise CodecError(f"the int4 kernel needs head_dim divisible by 8, got {d}")
    return TokenLayout(heads=h, seq=s, head_dim=d, bits=bits, scale_itemsize=2, zero_point=name == "int4")


def check_supported(name: str, params: Mapping[str, Any] | None) -> None:
    """A ``CodecError`` naming what is missing unless ``name`` with ``params`` has a kernel."""
    if name not in CODECS:
        raise CodecError(f"no GPU kernel for codec {name!r}; kernels exist for {', '.join(CODECS)}")
    if not supports(name, params):
        raise CodecError(f"the GPU kernel for {name!r} implements its default parameters "
                         f"{build(name).params}, not {dict(params or {})}")
