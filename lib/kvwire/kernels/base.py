"""The interface every GPU codec implements: one small class per codec family, one registry.

A ``KernelCodec`` serves one or more of the CPU codec names (``codecs.registry``) with the same
parameters and the same wire payload: ``encode`` turns a whole cache ``[layers, 2, kv_heads, seq,
head_dim]`` (K then V per layer, on a CUDA device, or on the CPU under ``TRITON_INTERPRET=1``) into
``GpuPayloads`` -- every layer's payload, back to back in one uint8 device buffer -- whose layer ``i``
equals the CPU codec's ``encode_layer`` bytes for that layer; ``decode`` turns them back into what
the CPU codec's ``decode_layer`` returns (a dense ``[layers, 2, heads, seq, head_dim]`` tensor, or a
list of ``LayerKV`` where layers keep different tokens). ``encode_eager`` / ``decode_eager`` are the
naive GPU baseline of the same codec (its torch ops run one by one on the device), timed beside the
kernels by ``bench.py``.

Where float reductions on the GPU cannot reproduce the CPU's bytes (a k-means, an SVD), a class
sets ``exact = False`` and implements ``compare``: the payloads may then differ by at most one
quantization step on fewer than ``1e-4`` of the elements (issue 5's rule).

Adding a GPU codec = a ``@register_kernel`` class in a family's ``kernel.py`` (a new family: a new
subpackage of ``kernels/`` with a ``kernel.py``) and its tests: the registry imports every
subpackage's ``kernel`` module on first use, so nothing else lists it. Where several classes serve
one name, lower ``rank`` is asked first, then the order the families are found in (sorted by name).

Caches whose layers differ in length (window-trimmed sliding layers, ``kvwire.kv``: Gemma-3 at 2048
tokens has 15 layers of 511 tokens and 3 of 2048) do not fit one ``[layers, 2, heads, seq, head_dim]``
tensor. They are encoded one GROUP of equal-shaped layers at a time (``split_groups``), each group
inside ``with cache_group(CacheGroup(...))``, which tells the kernel which layers of which cache the
stack holds: ``layer_contexts`` then returns those layers' real ``LayerContext`` (layer index, every
layer's shape, window start), so a codec whose payload depends on the whole cache (guardband's plan,
pyramidkv's budgets, CacheGen's depth tiers) or on positions (KVQuant's pre-RoPE keys) writes, for each
layer, the bytes the CPU codec writes inside the wire container. ``conformance`` checks exactly that.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import os
import pkgutil
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch

from ..codecs import LayerKV, build
from ..codecs.base import LayerContext, Pipeline
from ..errors import CodecError, KVError, WireError

KERNELS: dict[str, list[type["KernelCodec"]]] = {}  # codec name -> classes, asked in order (rank, then discovery)
UNKNOWN_STEPS = 1 << 30  # ``compare``'s step count where bytes differ and no step is defined
Stats = Sequence[Mapping[str, torch.Tensor]] | None  # one dict per layer (``LayerContext.stats``), or None


@dataclass(frozen=True)
class GpuPayloads:
    """A whole cache's payloads on one device: layer ``i`` is ``data[offsets[i]:offsets[i + 1]]``."""

    data: torch.Tensor  # uint8, 1-D
    offsets: tuple[int, ...]  # n_layers + 1 host ints, offsets[0] == 0, offsets[-1] == data.numel()

    def __post_init__(self) -> None:
        if self.data.dtype != torch.uint8 or self.data.dim() != 1:
            raise WireError(f"GPU payloads are a 1-D uint8 tensor, got {self.data.dtype} {list(self.data.shape)}")
        if not self.offsets or self.offsets[0] != 0 or self.offsets[-1] != self.data.numel() or any(
                b < a for a, b in zip(self.offsets, self.offsets[1:])):
            raise WireError(f"GPU payload offsets {list(self.offsets)[:8]}... do not tile {self.data.numel()} bytes")

    @classmethod
    def equal_slots(cls, data: torch.Tensor, n_layers: int) -> "GpuPayloads":
        """``n_layers`` payloads of the same length (the per-token schemes)."""
        if n_layers <= 0 or data.numel() % n_layers:
            raise WireError(f"{data.numel()} payload bytes do not split into {n_layers} equal layers")
        size = data.numel() // n_layers
        return cls(data, tuple(i * size for i in range(n_layers + 1)))

    def require_equal_slots(self, n_layers: int, layer_bytes: int, codec: str, shape: Sequence[int]) -> None:
        """A ``WireError`` unless these are ``n_layers`` payloads of ``layer_bytes`` each (a fixed-rate layout)."""
        if self.offsets != tuple(i * layer_bytes for i in range(n_layers + 1)):
            raise WireError(f"codec {codec!r}: {self.data.numel()} payload bytes in {self.n_layers} layers, "
                            f"expected {n_layers} layers of {layer_bytes} for shape {list(shape)}")

    @property
    def n_layers(self) -> int:
        return len(self.offsets) - 1

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    def layer(self, i: int) -> torch.Tensor:
        return self.data[self.offsets[i]:self.offsets[i + 1]]

    def to_bytes(self) -> list[bytes]:
        """Every layer's payload as host bytes (what the wire container frames)."""
        host = self.data.cpu().numpy()
        return [host[a:b].tobytes() for a, b in zip(self.offsets, self.offsets[1:])]

    @classmethod
    def from_bytes(cls, layers: Sequence[bytes], device) -> "GpuPayloads":
        """CPU codec payloads (one per layer) as one device buffer."""
        offsets = [0]
        for part in layers:
            offsets.append(offsets[-1] + len(part))
        buf = torch.frombuffer(bytearray(b"".join(layers)), dtype=torch.uint8) if offsets[-1] else \
            torch.empty(0, dtype=torch.uint8)
        return cls(buf.to(device), tuple(offsets))


Decoded = torch.Tensor | list[LayerKV]


class KernelCodec(ABC):
    """The GPU implementation of CPU codec ``name`` with canonical ``params``.

    Subclasses set ``names`` (the registry names they serve) and implement ``supports``, ``encode``,
    ``decode`` and the eager baseline. ``self.codec`` is the CPU ``Pipeline`` (the reference).
    """

    names: ClassVar[tuple[str, ...]] = ()
    exact: ClassVar[bool] = True  # payload bytes identical to the CPU codec's
    needs_stats: ClassVar[tuple[str, ...]] = ()  # LayerContext.stats keys the encoder reads
    rank: ClassVar[int] = 1  # where several classes serve one name, lower ranks are asked first

    def __init__(self, name: str, params: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.codec: Pipeline = build(name, params)
        if not self.supports(name, self.codec.params):
            raise CodecError(f"the GPU kernel for {name!r} does not implement parameters {self.codec.params}; "
                             f"{self.limits()}")

    @property
    def params(self) -> dict[str, Any]:
        return self.codec.params

    @classmethod
    def supports(cls, name: str, params: Mapping[str, Any]) -> bool:
        """Whether the canonical ``params`` of codec ``name`` are implemented (default: its defaults only)."""
        return params == build(name).params

    @classmethod
    def limits(cls) -> str:
        """What ``supports`` accepts, in words (for the error that refuses the rest)."""
        return "it implements the codec's default parameters"

    def layer_bytes(self, shape: tuple[int, int, int]) -> int | None:
        """Bytes of every layer's payload for layers of ``shape`` (kv_heads, seq, head_dim) where the
        shape alone fixes them (a receiver can post its buffers before any byte arrives); None where
        they depend on the values (the default)."""
        return None

    @abstractmethod
    def encode(self, kv: torch.Tensor, stats: Stats = None, *, check: bool = True) -> GpuPayloads:
        """``check``: refuse NaN/Inf input with a ``KVError`` (may sync); the bench passes False."""

    @abstractmethod
    def decode(self, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype, *,
               check: bool = True) -> Decoded:
        """``check``: refuse a damaged payload (section table, sizes) with a ``WireError``."""

    @abstractmethod
    def encode_eager(self, kv: torch.Tensor, stats: Stats = None) -> GpuPayloads: ...

    @abstractmethod
    def decode_eager(self, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype) -> Decoded: ...

    def encode_bytes_read(self, raw_bytes: int, payload_bytes: int, stats: Stats = None) -> int:
        """Bytes an encode reads from device memory (the bench's bytes moved = this + bytes written):
        the whole cache by default; token selection overrides it (it reads only the kept rows)."""
        return raw_bytes

    def bench_stats(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> Stats:
        """Statistics for a random cache of ``shape`` (codecs that need ``needs_stats`` override this)."""
        if self.needs_stats:
            raise KVError(f"codec {self.name!r} needs statistics {list(self.needs_stats)} and defines no bench_stats")
        return None

    def compare(self, got: bytes, want: bytes, ctx: LayerContext, kv: LayerKV | None = None) -> tuple[int, int, int]:
        """(elements that differ, elements, largest difference in quantization steps) of one layer's
        payload against the CPU codec's; only ``exact = False`` classes need more than byte equality
        (``kv``: the layer's input on the host, for checks against the original, e.g. low rank)."""
        # exact kernels: bytes, not elements, and any difference is beyond tolerance (no step count)
        if got == want:
            return 0, len(want), 0
        if len(got) != len(want):
            return len(want), len(want), UNKNOWN_STEPS
        diff = np.frombuffer(got, dtype=np.uint8) != np.frombuffer(want, dtype=np.uint8)
        return int(np.count_nonzero(diff)), len(want), UNKNOWN_STEPS

    def same_decode(self, got: Sequence[LayerKV], want: Sequence[LayerKV]) -> bool:
        """Whether the kernel's decode of the CPU payloads matches the CPU decode (default: bit for bit)."""
        return same_layers(got, want)


def register_kernel(cls: type[KernelCodec]) -> type[KernelCodec]:
    """Class decorator: ``cls`` serves ``cls.names`` (for the parameters its ``supports`` accepts;
    several classes may serve one name, e.g. per-token and per-channel int8, asked by ``rank``)."""
    for name in cls.names:
        if cls in KERNELS.setdefault(name, []):
            raise CodecError(f"GPU kernel {cls.__name__} for {name!r} registered twice")
        KERNELS[name].append(cls)
        KERNELS[name].sort(key=lambda c: c.rank)  # stable: equal ranks keep their registration order
    return cls


@functools.lru_cache(maxsize=1)
def families() -> tuple[str, ...]:
    """The kernel families: every subpackage of ``kvwire.kernels``, sorted by name."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules([os.path.dirname(__file__)]) if m.ispkg))


def _load() -> None:
    """Import every family's ``kernel`` module (its ``@register_kernel`` classes register themselves)."""
    for family in families():
        importlib.import_module(f"{__package__}.{family}.kernel")


def supported(name: str, params: Mapping[str, Any] | None = None) -> bool:
    """Whether codec ``name`` with ``params`` has a GPU kernel."""
    _load()
    if name not in KERNELS:
        return False
    canonical = build(name, params).params
    return any(cls.supports(name, canonical) for cls in KERNELS[name])


def kernel_names() -> list[str]:
    """Every codec name with a GPU kernel."""
    _load()
    return sorted(KERNELS)


def kernel_for(name: str, params: Mapping[str, Any] | None = None) -> KernelCodec:
    """The GPU codec for ``name`` with ``params``; a ``CodecError`` naming what is missing otherwise."""
    _load()
    if name not in KERNELS:
        raise CodecError(f"no GPU kernel for codec {name!r}; kernels exist for {', '.join(sorted(KERNELS))}")
    canonical = build(name, params).params
    for cls in KERNELS[name]:
        if cls.supports(name, canonical):
            return cls(name, params)
    raise CodecError(f"no GPU kernel for codec {name!r} with parameters {canonical}; "
                     + "; ".join(f"{cls.__name__}: {cls.limits()}" for cls in KERNELS[name]))


def check_cache(kv: torch.Tensor, what: str = "GPU codecs") -> tuple[int, int, int, int]:
    """(layers, kv_heads, seq, head_dim) of a ``[layers, 2, kv_heads, seq, head_dim]`` fp cache."""
    if kv.dim() != 5 or kv.shape[1] != 2:
        raise KVError(f"a cache for the {what} is [layers, 2, kv_heads, seq, head_dim], got {list(kv.shape)}")
    if kv.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise KVError(f"the {what} take fp16, bf16 or fp32 caches, not {kv.dtype}")
    n, _, h, s, d = kv.shape
    return n, h, s, d


@dataclass(frozen=True)
class CacheGroup:
    """Layers ``layers`` (indices, ascending) of a cache whose layers have ``shapes`` (kv_heads, seq,
    head_dim) and window ``starts`` (empty: all 0): the equal-shaped layers one kernel call handles."""

    shapes: tuple[tuple[int, int, int], ...]
    layers: tuple[int, ...]
    starts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.layers or len({tuple(self.shapes[i]) for i in self.layers}) != 1:
            raise KVError(f"a cache group holds layers of one shape, got layers {list(self.layers)} of "
                          f"{sorted({tuple(self.shapes[i]) for i in self.layers})}")
        if self.starts and len(self.starts) != len(self.shapes):
            raise KVError(f"{len(self.starts)} window starts for {len(self.shapes)} layers")

    @property
    def n_layers(self) -> int:
        """Layers of the whole cache."""
        return len(self.shapes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.shapes[self.layers[0]])

    def start(self, layer: int) -> int:
        return int(self.starts[layer]) if self.starts else 0

    def context(self, j: int, dtype: torch.dtype, stats: Mapping[str, torch.Tensor] | None = None) -> LayerContext:
        """The wire container's ``LayerContext`` of the group's ``j``-th layer."""
        i = self.layers[j]
        return LayerContext(i, self.n_layers, dtype, self.shape, dict(stats or {}), shapes=self.shapes,
                            start=self.start(i))


_GROUP: contextvars.ContextVar[CacheGroup | None] = contextvars.ContextVar("kvwire_cache_group", default=None)


@contextmanager
def cache_group(group: CacheGroup | None):
    """Kernel calls inside handle ``group``'s layers of a larger cache (see the module docstring)."""
    token = _GROUP.set(group)
    try:
        yield group
    finally:
        _GROUP.reset(token)


def current_group(n: int, shape: Sequence[int]) -> CacheGroup | None:
    """The ``cache_group`` a call on ``n`` layers of ``shape`` (kv_heads, seq, head_dim) runs in, or
    None (the stack is the whole cache); a ``KVError`` when the stack is not that group's."""
    group = _GROUP.get()
    if group is None:
        return None
    if len(group.layers) != n or group.shape != tuple(int(x) for x in shape):
        raise KVError(f"a kernel call on {n} layers of shape {list(shape)} inside a cache group of "
                      f"{len(group.layers)} layers of shape {list(group.shape)}")
    return group


def split_groups(shapes: Sequence[Sequence[int]], starts: Sequence[int] | None = None) -> list[CacheGroup]:
    """A cache's layers, grouped by shape (groups in order of their first layer): one ``CacheGroup``
    per shape; a single group for a cache of equal layers."""
    shapes = tuple(tuple(int(x) for x in s) for s in shapes)
    by_shape: dict[tuple[int, int, int], list[int]] = {}
    for i, s in enumerate(shapes):
        by_shape.setdefault(s, []).append(i)
    st = tuple(int(x) for x in starts) if starts is not None and any(starts) else ()
    return [CacheGroup(shapes, tuple(idx), st) for idx in by_shape.values()]


def layer_contexts(shape: tuple[int, ...], dtype: torch.dtype, stats: Stats = None) -> list[LayerContext]:
    """The CPU codec's ``LayerContext`` of every layer of a cache of ``shape`` -- inside a
    ``cache_group``, of the group's layers within the whole cache."""
    n, _, h, s, d = shape
    group = current_group(n, (h, s, d))
    if group is not None:
        return [group.context(j, dtype, stats[j] if stats else None) for j in range(n)]
    return [LayerContext(i, n, dtype, (h, s, d), dict(stats[i]) if stats else {}) for i in range(n)]


def as_layers(decoded: Decoded) -> list[LayerKV]:
    """A decode's result as one ``LayerKV`` per layer (dense tensors split, lists passed through)."""
    if isinstance(decoded, torch.Tensor):
        return [LayerKV(x[0], x[1]) for x in decoded]
    return list(decoded)


def same_layers(a: Sequence[LayerKV], b: Sequence[LayerKV]) -> bool:
    """Bit-identical K, V and kept positions, layer by layer (on the host)."""
    def pos(x):
        return None if x.positions is None else x.positions.cpu()

    return len(a) == len(b) and all(
        torch.equal(x.k.cpu(), y.k.cpu()) and torch.equal(x.v.cpu(), y.v.cpu()) and
        ((pos(x) is None and pos(y) is None) or (pos(x) is not None and pos(y) is not None and torch.equal(pos(x), pos(y))))
        for x, y in zip(a, b))
