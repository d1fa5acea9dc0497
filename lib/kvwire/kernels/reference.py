"""The CPU codecs over a whole cache, in the kernels' contract: what every kernel must reproduce."""

from __future__ import annotations

import torch

from ..codecs import LayerKV, build
from ..codecs.base import LayerContext


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
