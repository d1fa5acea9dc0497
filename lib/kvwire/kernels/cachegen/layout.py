"""CacheGen's host-side data: the quantized symbols of a whole cache (what the kernel and the eager
baseline both hand to the entropy stage) and the byte layout of ``entropy="none"`` payloads."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ...codecs.base import section_header
from ...codecs.bitpack import packed_size
from ...codecs.cachegen import _MODE_PACKED, layer_tier


@dataclass
class CacheGenSymbols:
    """The quantized symbols of a whole cache, as the CPU codec's entropy stage receives them."""

    shape: tuple[int, ...]  # [layers, 2, heads, seq, head_dim]
    anchor_codes: torch.Tensor  # uint8 [layers, 2, heads, chunks, head_dim]
    anchor_scale: torch.Tensor  # float16 [layers, 2, heads, head_dim]
    anchor_zero: torch.Tensor  # float16 [layers, 2, heads, head_dim]
    delta_codes: torch.Tensor  # uint8 [layers, 2, heads, head_dim, deltas] (channel-major, the stream order)
    delta_scale: torch.Tensor  # float16 [layers, 2, heads, head_dim]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.anchor_codes, self.anchor_scale, self.anchor_zero,
                                                          self.delta_codes, self.delta_scale))


@dataclass(frozen=True, eq=False)  # hashed by identity: one per (params, shape), from lru_cache
class PackedLayout:
    """Byte layout of ``entropy="none"`` payloads (every stream bit-packed) for one cache shape."""

    offsets: tuple[int, ...]
    sections: np.ndarray  # int64 [layers, 10]: absolute offset of each section
    header_at: np.ndarray  # int64: section tables and stream mode bytes
    header_bytes: np.ndarray  # uint8


@lru_cache(maxsize=64)
def packed_layout(params_items: tuple, shape: tuple[int, ...], tiers: tuple[int, ...] | None = None) -> PackedLayout:
    """``tiers``: each layer's ``layer_tier`` (default: of a whole cache of ``shape``; ``CacheGenKernel._tiers``)."""
    p = dict(params_items)
    n, _, h, s, d = shape
    tiers = tiers if tiers is not None else tuple(layer_tier(i, n) for i in range(n))
    c = p["chunk_size"]
    nc = -(-s // c)
    nd = s - nc
    offsets, secs, at_list, byte_list = [0], [], [], []
    for i in range(n):
        bits = p[("bits_early", "bits_mid", "bits_late")[tiers[i]]]
        ab = p["anchor_bits"]
        a_stream = 1 + (h * nc * d if ab == 8 else packed_size(h * nc * d, ab))
        d_stream = 1 + (0 if nd == 0 else h * d * nd if bits == 8 else packed_size(h * d * nd, bits))
        per = [2 * h * d, 2 * h * d, a_stream, 2 * h * d if nd else 0, d_stream]
        lengths = per * 2
        head = section_header(lengths)
        pos = offsets[-1] + len(head)
        row = []
        for length in lengths:
            row.append(pos)
            pos += length
        secs.append(row)
        at_list.append(np.arange(offsets[-1], offsets[-1] + len(head)))
        byte_list.append(np.frombuffer(head, dtype=np.uint8))
        for j in (2, 4, 7, 9):  # the streams' mode bytes: packed
            at_list.append(np.array([row[j]]))
            byte_list.append(np.array([_MODE_PACKED], dtype=np.uint8))
        offsets.append(pos)
    return PackedLayout(tuple(offsets), np.array(secs, dtype=np.int64),
                        np.concatenate(at_list).astype(np.int64), np.concatenate(byte_list))
