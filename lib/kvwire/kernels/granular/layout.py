"""What one granular setting quantizes (``Scheme``) and its payload layout: shared by the kernels
(``kernel.py``) and the eager baseline (``eager.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from ...codecs.quant import SCALE_DTYPES, levels
from ..layout import TokenLayout


@dataclass(frozen=True)
class Scheme:
    """What one codec setting quantizes on a cache of a given head_dim."""

    kind: str  # "int8", "int4" or "fp8_e5m2" (jit.KINDS)
    channel: bool  # one scale per (head, channel) over the sequence; else one per run of ``group``
    group: int  # elements per row: the run of one scale, or (channel) a token's head_dim
    symmetric: bool
    scale_dtype: str

    @property
    def bits(self) -> int:
        return 4 if self.kind == "int4" else 8

    @property
    def per_byte(self) -> int:  # codes per byte
        return 2 if self.kind == "int4" else 1

    @property
    def qmax(self) -> float:
        return float(levels(self.bits, self.symmetric)) if self.kind != "fp8_e5m2" else 1.0

    @property
    def itemsize(self) -> int:
        return SCALE_DTYPES[self.scale_dtype].itemsize

    def layout(self, shape: tuple[int, ...]) -> TokenLayout:
        """One layer's payload layout. ``TokenLayout`` counts ``heads * seq`` scale units of ``head_dim``
        elements per tensor, which is this layout with (heads, units per head, elements per unit):
        (h, s * d / G, G) for rows of G, (h, d, s) for channels (h * d scales over s tokens)."""
        _, _, h, s, d = shape
        per_head, size = (d, s) if self.channel else (s * d // self.group, self.group)
        return TokenLayout(heads=h, seq=per_head, head_dim=size, bits=self.bits, scale_itemsize=self.itemsize,
                           zero_point=not self.symmetric)
