"""Where each section of a per-token codec's payload sits, so a kernel writes the wire bytes in place.

A codec's payload is ``pack_sections`` of its sections: a u32 count, one u64 length per section,
then the sections back to back. For the per-token schemes every layer of one cache has the same
shape, hence the same section lengths and the same header: a whole cache's payloads are one buffer
of ``n_layers`` equal slots, and a kernel maps row (layer, K/V, head, token) to its bytes by
arithmetic alone. The header comes from the CPU codec's own ``section_header`` (the same
lengths), so the layouts cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..codecs.base import section_header
from ..codecs.bitpack import packed_size


class SectionTable:
    """The section table of a payload of fixed sections: a layout class gives ``sections`` (byte
    lengths) and ``SECTION_NAMES`` (their names, in order); this gives header, size and offsets."""

    SECTION_NAMES: tuple[str, ...] = ()

    @property
    def header(self) -> bytes:
        return section_header(self.sections)

    @property
    def layer_bytes(self) -> int:
        return len(self.header) + sum(self.sections)

    def offsets(self) -> dict[str, int]:
        """Byte offset of each named section within a layer's payload."""
        out, pos = {}, len(self.header)
        for name, size in zip(self.SECTION_NAMES, self.sections):
            out[name] = pos
            pos += size
        return out


@dataclass(frozen=True)
class TokenLayout:
    """Byte layout of one layer's payload for a per-token scheme.

    ``codes`` bytes of codes and ``scale_bytes`` of scales (and, with ``zero_point``, as many of
    zero points) per tensor, K's sections then V's: ``[codes, scales(, zeros)]`` twice.
    """

    heads: int
    seq: int
    head_dim: int
    bits: int
    scale_itemsize: int
    zero_point: bool

    @property
    def rows(self) -> int:  # (head, token) rows of one tensor
        return self.heads * self.seq

    @property
    def codes(self) -> int:
        n = self.rows * self.head_dim
        return n if self.bits == 8 else packed_size(n, self.bits)

    @property
    def scale_bytes(self) -> int:
        return self.rows * self.scale_itemsize

    @property
    def sections(self) -> list[int]:
        per = [self.codes, self.scale_bytes] + ([self.scale_bytes] if self.zero_point else [])
        return per * 2

    @property
    def header(self) -> bytes:
        return section_header(self.sections)

    @property
    def layer_bytes(self) -> int:
        return len(self.header) + sum(self.sections)

    def offsets(self) -> dict[str, int]:
        """Offsets within a layer's payload: ``{k,v}_{codes,scales,zeros}``."""
        out, pos = {}, len(self.header)
        names = ["codes", "scales"] + (["zeros"] if self.zero_point else [])
        for tensor in ("k", "v"):
            for name in names:
                out[f"{tensor}_{name}"] = pos
                pos += self.codes if name == "codes" else self.scale_bytes
        return out
