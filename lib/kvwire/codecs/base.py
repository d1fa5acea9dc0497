"""The codec interface: a codec turns one layer's K and V into bytes and back.

Two kinds of stage exist. A *tensor codec* (identity, int8, ...) maps a layer's
``LayerKV`` to a payload and back; it may be lossy. A *byte stage* (zstd, ...)
is lossless and maps bytes to bytes, so it composes after any tensor codec
(``int8+zstd``). ``Pipeline`` joins one tensor codec with zero or more byte
stages and is what the registry hands out; the wire container only ever talks
to a ``Pipeline``.
"""

from __future__ import annotations

import copy
import math
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence, Union

import torch

from ..errors import CodecError, KVError, WireError
from ..limits import MAX_INT_PARAM, payload_limit

Buffer = Union[bytes, bytearray, memoryview]  # what a payload part may be (anything b"".join takes)

KV_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class LayerKV:
    """One layer's cache. ``k`` and ``v`` are [kv_heads, seq, head_dim].

    ``positions`` holds each kept token's original position (int64 [seq]); ``None``
    means the dense run 0..seq-1. Token-selection codecs return the positions of
    the tokens they keep, so re-injection can place them at the right RoPE slots.
    """

    k: torch.Tensor
    v: torch.Tensor
    positions: torch.Tensor | None = None

    @property
    def raw_bytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


@dataclass(frozen=True)
class LayerContext:
    """What a codec may know about the layer besides its tensors.

    ``shapes`` holds every layer's (kv_heads, seq, head_dim) of the cache this layer belongs to -- the
    wire header's -- so a codec that plans over the whole cache (guardband, pyramidkv) sees layers of
    different lengths (window-trimmed sliding layers, ``kvwire.kv``); empty means every layer has
    ``shape`` (``cache_shapes``). ``start`` is the original position of the layer's first stored token
    (its ``window_starts`` entry: 0 unless the layer was trimmed to its sliding window); a codec that
    depends on positions (KVQuant's pre-RoPE keys) adds it.
    """

    layer: int
    n_layers: int
    dtype: torch.dtype
    shape: tuple[int, int, int]  # (kv_heads, seq, head_dim) of the original layer
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    shapes: tuple[tuple[int, int, int], ...] = ()
    start: int = 0

    def __post_init__(self) -> None:
        if self.shapes and (len(self.shapes) != self.n_layers or not 0 <= self.layer < self.n_layers
                            or tuple(self.shapes[self.layer]) != tuple(self.shape)):
            raise KVError(f"layer {self.layer}: context shape {list(self.shape)} does not match the cache's "
                          f"{len(self.shapes)} layer shapes (n_layers {self.n_layers})")
        if self.start < 0:
            raise KVError(f"layer {self.layer}: negative window start {self.start}")

    @property
    def cache_shapes(self) -> tuple[tuple[int, int, int], ...]:
        """Every layer's shape: ``shapes``, or ``shape`` repeated when the context does not say."""
        if self.shapes:
            return tuple(tuple(int(x) for x in s) for s in self.shapes)
        return (tuple(int(x) for x in self.shape),) * self.n_layers


@dataclass(frozen=True)
class Param:
    """A codec parameter: its type, default and a one-line description."""

    kind: type
    default: Any
    help: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None

    def check(self, codec: str, name: str, value: Any) -> Any:
        ok_type = isinstance(value, self.kind) and not (self.kind is not bool and isinstance(value, bool))
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok_type = float(value), True
        if not ok_type:
            raise CodecError(
                f"codec {codec!r}: parameter {name!r} must be {self.kind.__name__}, got {value!r}"
            )
        if self.kind is float and not math.isfinite(value):
            raise CodecError(f"codec {codec!r}: parameter {name!r} must be a finite number, got {value!r}")
        if self.kind is int and self.maximum is None and abs(value) > MAX_INT_PARAM:
            raise CodecError(f"codec {codec!r}: parameter {name!r} must be within +-{MAX_INT_PARAM}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise CodecError(f"codec {codec!r}: parameter {name!r} must be one of {list(self.choices)}, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise CodecError(f"codec {codec!r}: parameter {name!r} must be >= {self.minimum}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise CodecError(f"codec {codec!r}: parameter {name!r} must be <= {self.maximum}, got {value!r}")
        return value


class _Parametrised:
    name: ClassVar[str]
    PARAMS: ClassVar[dict[str, Param]] = {}

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.PARAMS))
        if unknown:
            valid = ", ".join(sorted(self.PARAMS)) or "none"
            raise CodecError(f"codec {self.name!r}: unknown parameter(s) {unknown}; valid: {valid}")
        self._params = {
            # deep copies: a mutable default (a dict param) must never be shared between codecs
            key: copy.deepcopy(spec.check(self.name, key, params[key]) if key in params else spec.default)
            for key, spec in self.PARAMS.items()
        }

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._params)


class TensorCodec(_Parametrised, ABC):
    """Encodes one layer's K and V to a payload; ``lossless`` says whether decode is exact."""

    lossless: ClassVar[bool] = False
    summary: ClassVar[str] = ""

    # whether decode_layer takes a memoryview (a read-only view into the container, valid while it
    # is) as it takes bytes; a codec that does not gets a bytes copy of the payload
    accepts_views: ClassVar[bool] = False

    @abstractmethod
    def encode_layer(self, kv: LayerKV, ctx: LayerContext) -> bytes: ...

    def encode_parts(self, kv: LayerKV, ctx: LayerContext) -> list[Buffer]:
        """The payload as a list of buffers whose concatenation is ``encode_layer``'s bytes: a codec
        whose payload is mostly the tensors' own memory returns views of it, so the container copies
        each byte once (into the frame) instead of once per concatenation."""
        return [self.encode_layer(kv, ctx)]

    @abstractmethod
    def decode_layer(self, payload: bytes, ctx: LayerContext) -> LayerKV: ...


class ByteStage(_Parametrised, ABC):
    """A lossless bytes -> bytes stage that composes after any tensor codec."""

    summary: ClassVar[str] = ""

    @abstractmethod
    def compress(self, data: bytes) -> bytes: ...

    @abstractmethod
    def decompress(self, data: bytes, max_size: int | None = None) -> bytes:
        """The original bytes; more than ``max_size`` of them (the layer's payload limit, from the
        validated header) is a ``WireError`` raised before they are all produced."""


class Pipeline:
    """One tensor codec followed by byte stages: the unit the registry builds and the wire stores.

    ``named`` lists the stages the codec's name spells out (``zstd`` alone names only the
    byte stage; its tensor codec is an implicit identity), which fixes the params layout.
    """

    def __init__(self, name: str, tensor: TensorCodec, stages: Sequence[ByteStage],
                 named: Sequence[_Parametrised]) -> None:
        self.name = name
        self.tensor = tensor
        self.stages = tuple(stages)
        self._named = tuple(named)

    @property
    def lossless(self) -> bool:
        return self.tensor.lossless

    @property
    def params(self) -> dict[str, Any]:
        """Canonical parameters: flat for a single stage, keyed by stage name for a composite."""
        if len(self._named) == 1:
            return self._named[0].params
        return {p.name: p.params for p in self._named}

    def encode_layer(self, kv: LayerKV, ctx: LayerContext) -> bytes:
        parts = self.encode_parts(kv, ctx)
        return parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)

    def encode_parts(self, kv: LayerKV, ctx: LayerContext) -> list[Buffer]:
        """The layer's payload as buffers to concatenate (``TensorCodec.encode_parts``): views of the
        tensors' memory where the codec allows, valid while ``kv`` is unchanged."""
        check_layer(kv, ctx)  # shapes, dtypes and empty dimensions, once, for every codec
        if not (kv.k.is_contiguous() and kv.v.is_contiguous()):  # a view or a slice: the codecs read memory in order
            kv = LayerKV(kv.k.contiguous(), kv.v.contiguous(), kv.positions)
        parts = self.tensor.encode_parts(kv, ctx)
        if not self.stages:
            return parts
        payload = parts[0] if len(parts) == 1 else b"".join(parts)
        for stage in self.stages:
            payload = stage.compress(payload)
        return [payload]

    def decode_layer(self, payload: Buffer, ctx: LayerContext) -> LayerKV:
        """``payload``: bytes, or a read-only memoryview (of a container that does not change while
        this runs); the byte stages read views, a tensor codec that does not gets a copy."""
        if self.stages:
            limit = payload_limit(ctx.shape, torch.empty((), dtype=ctx.dtype).element_size())
            for stage in reversed(self.stages):
                payload = stage.decompress(payload, limit)
        if not isinstance(payload, bytes) and not self.tensor.accepts_views:
            payload = bytes(payload)
        return self.tensor.decode_layer(payload, ctx)

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, params={self.params!r})"


# ---- helpers every codec uses -------------------------------------------------------------

def require_finite(kv: LayerKV, ctx: LayerContext, codec: str) -> None:
    """Lossy codecs refuse NaN/Inf: a scale computed from them would corrupt the whole group."""
    for label, t in (("keys", kv.k), ("values", kv.v)):
        # amax/amin propagate NaN and expose +-Inf: ~3x cheaper than isfinite() over every element
        if t.numel() and not bool(torch.isfinite(torch.stack([t.amax(), t.amin()])).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise KVError(f"codec {codec!r}: {bad} NaN/Inf value(s) in layer {ctx.layer} {label}")


def check_layer(kv: LayerKV, ctx: LayerContext) -> None:
    for label, t in (("keys", kv.k), ("values", kv.v)):
        if t.dim() != 3:
            raise KVError(f"layer {ctx.layer} {label}: expected [kv_heads, seq, head_dim], got shape {tuple(t.shape)}")
        if t.dtype not in KV_DTYPES:
            raise KVError(f"layer {ctx.layer} {label}: dtype {t.dtype} not supported (fp16, bf16, fp32)")
    if kv.k.shape != kv.v.shape:
        raise KVError(f"layer {ctx.layer}: key shape {tuple(kv.k.shape)} != value shape {tuple(kv.v.shape)}")
    check_dims(kv.k.shape, ctx.layer)


def check_dims(shape: Sequence[int], layer: int) -> None:
    """Every dimension of a layer at least 1: an empty cache has nothing to encode, and a codec's
    group and scale arithmetic divides by these."""
    for name, n in zip(("kv_heads", "seq", "head_dim"), shape):
        if n < 1:
            raise KVError(f"layer {layer}: {name} is {n}; a layer needs at least one of each "
                          f"(kv_heads, seq, head_dim), got shape {tuple(shape)}")


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The tensor's memory as bytes (little-endian, row-major), whatever its dtype."""
    # reshape(-1) first: a "contiguous" tensor whose last dim has size 1 may still carry a non-unit
    # stride there, which view(uint8) refuses
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def tensor_view(t: torch.Tensor) -> memoryview:
    """The memory of a contiguous CPU tensor as a flat byte view, without a copy (``tensor_bytes``
    without the copy); valid while the tensor is unchanged."""
    if t.device.type != "cpu" or not t.is_contiguous():
        return memoryview(tensor_bytes(t))
    t = t.detach().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


def tensor_from(buf: bytes | memoryview, dtype: torch.dtype, shape: Sequence[int]) -> torch.Tensor:
    """Rebuild a tensor from bytes, checking the byte count first."""
    n = 1
    for s in shape:
        n *= int(s)
    expected = n * torch.empty((), dtype=dtype).element_size()
    if len(buf) != expected:
        raise WireError(f"tensor payload has {len(buf)} bytes, expected {expected} for {dtype} {list(shape)}")
    if n == 0:
        return torch.empty(tuple(shape), dtype=dtype)
    return torch.frombuffer(bytearray(buf), dtype=dtype).reshape(tuple(shape))


_SECTION_COUNT = struct.Struct("<I")
_SECTION_LEN = struct.Struct("<Q")


def section_header(lengths: Sequence[int]) -> bytes:
    """The length table ``pack_sections`` puts before sections of these byte lengths."""
    return _SECTION_COUNT.pack(len(lengths)) + b"".join(_SECTION_LEN.pack(n) for n in lengths)


def pack_sections(sections: Sequence[bytes]) -> bytes:
    """Concatenate byte sections with a length table so a decoder can split them safely."""
    return section_header([len(s) for s in sections]) + b"".join(sections)


def unpack_sections(payload: bytes, expected: int, codec: str) -> list[memoryview]:
    view = memoryview(payload)
    if len(view) < _SECTION_COUNT.size:
        raise WireError(f"codec {codec!r}: payload too short ({len(view)} bytes)")
    (count,) = _SECTION_COUNT.unpack_from(view, 0)
    if count != expected:
        raise WireError(f"codec {codec!r}: payload has {count} sections, expected {expected}")
    offset = _SECTION_COUNT.size
    table_end = offset + count * _SECTION_LEN.size
    if len(view) < table_end:
        raise WireError(f"codec {codec!r}: payload section table truncated")
    lengths = [_SECTION_LEN.unpack_from(view, offset + i * _SECTION_LEN.size)[0] for i in range(count)]
    if table_end + sum(lengths) != len(view):
        raise WireError(
            f"codec {codec!r}: payload is {len(view)} bytes but its sections add up to {table_end + sum(lengths)}"
        )
    out, pos = [], table_end
    for n in lengths:
        out.append(view[pos : pos + n])
        pos += n
    return out
