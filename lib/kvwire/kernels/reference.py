"""The CPU codecs over a whole cache, in the kernels' contract: what every kernel must reproduce."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..codecs import LayerKV, build
from ..codecs.base import LayerContext, Pipeline
from .base import GpuPayloads, KernelCodec, Stats, as_layers, layer_contexts


def encode_cache_reference(name: str, kv: torch.Tensor) -> bytes:
    """The CPU codec's ``encode_layer`` bytes of every layer of ``kv`` [layers, 2, heads, seq, dim], concatenated."""
    codec = build(name)
    n, _, h, s, d = kv.shape
    kv = kv.cpu()
    return b"".join(codec.encode_layer(LayerKV(kv[i, 0], kv[i, 1]), LayerContext(i, n, kv.dtype, (h, s, d)))
                    for i in range(n))


def decode_cache_reference(name: str, data: bytes, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The CPU codec's ``decode_layer`` of ``encode_cache_reference``'s bytes, stacked like the input."""
    codec = build(name)
    n, _, h, s, d = shape
    size = len(data) // n
    layers = [codec.decode_layer(data[i * size:(i + 1) * size], LayerContext(i, n, dtype, (h, s, d)))
              for i in range(n)]
    return torch.stack([torch.stack([x.k, x.v]) for x in layers])


def cpu_payloads(codec: Pipeline, kv: torch.Tensor, stats: Stats = None) -> list[bytes]:
    """The CPU ``codec``'s payload of every layer of ``kv`` [layers, 2, heads, seq, dim] (stats per layer)."""
    kv = kv.cpu()
    ctxs = layer_contexts(tuple(kv.shape), kv.dtype, _host_stats(stats))
    return [codec.encode_layer(LayerKV(kv[i, 0], kv[i, 1]), ctxs[i]) for i in range(kv.shape[0])]


def cpu_decoded(codec: Pipeline, payloads: Sequence[bytes], shape: tuple[int, ...], dtype: torch.dtype,
                stats: Stats = None) -> list[LayerKV]:
    """The CPU ``codec``'s ``decode_layer`` of every layer's payload."""
    ctxs = layer_contexts(shape, dtype, _host_stats(stats))
    return [codec.decode_layer(p, ctxs[i]) for i, p in enumerate(payloads)]


def _host_stats(stats: Stats):
    return None if stats is None else [{k: v.cpu() for k, v in s.items()} for s in stats]


@dataclass(frozen=True)
class Conformance:
    """A kernel's payload and decode against the CPU codec, over the layers checked."""

    layers: tuple[int, ...]
    identical: bool  # every checked layer's payload bytes equal the CPU codec's
    differing: int  # elements whose code differs (``KernelCodec.compare``)
    elements: int
    max_steps: int  # largest code difference in quantization steps
    decode_identical: bool  # the kernel's decode of the CPU payload == the CPU decode, bit for bit

    @property
    def within_tolerance(self) -> bool:
        """Issue 5's rule: identical, or at most one step apart on fewer than 1e-4 of the elements."""
        return self.identical or (self.max_steps <= 1 and self.differing < 1e-4 * max(self.elements, 1))

    @property
    def ok(self) -> bool:
        return self.within_tolerance and self.decode_identical


def conformance(kernel: KernelCodec, kv: torch.Tensor, stats: Stats = None,
                layers: Sequence[int] | None = None, payloads: GpuPayloads | None = None) -> Conformance:
    """Check ``kernel`` on ``kv`` (on its device) against its CPU codec, on ``layers`` (default all).

    The CPU codec encodes the checked layers, each with its own ``LayerContext(i, n, ...)``. For the
    decode check the kernel decodes a whole cache whose checked layers hold the CPU's payloads (the
    others its own), so layer-dependent layouts (CacheGen's bins, guard bands) decode as they should.
    """
    n = kv.shape[0]
    layers = tuple(range(n)) if layers is None else tuple(sorted(set(layers)))
    payloads = payloads if payloads is not None else kernel.encode(kv, stats)
    host_stats = _host_stats(None if stats is None else [stats[i] for i in range(n)])
    ctxs = layer_contexts(tuple(kv.shape), kv.dtype, host_stats)
    got = {i: payloads.layer(i).cpu().numpy().tobytes() for i in layers}  # only the checked layers cross
    want, inputs = {}, {}
    for i in layers:
        layer = kv[i].cpu()
        inputs[i] = LayerKV(layer[0], layer[1])
        want[i] = kernel.codec.encode_layer(inputs[i], ctxs[i])
    differing = elements = steps = 0
    for i in layers:
        d, e, s = kernel.compare(got[i], want[i], ctxs[i], kv=inputs[i])
        differing, elements, steps = differing + d, elements + e, max(steps, s)
    identical = all(got[i] == want[i] for i in layers)
    if all(len(got[i]) == len(want[i]) for i in layers):  # splice the CPU's payloads in on the device
        data = payloads.data.clone()
        for i in layers:
            data[payloads.offsets[i]:payloads.offsets[i + 1]] = torch.frombuffer(
                bytearray(want[i]), dtype=torch.uint8).to(data.device)
        mixed = GpuPayloads(data, payloads.offsets)
    else:
        mixed = GpuPayloads.from_bytes([want.get(i) or payloads.layer(i).cpu().numpy().tobytes()
                                        for i in range(n)], kv.device)
    dev = as_layers(kernel.decode(mixed, tuple(kv.shape), kv.dtype))
    dec_ok = kernel.same_decode([dev[i] for i in layers], [kernel.codec.decode_layer(want[i], ctxs[i]) for i in layers])
    return Conformance(layers, identical, differing, elements, steps, dec_ok)
