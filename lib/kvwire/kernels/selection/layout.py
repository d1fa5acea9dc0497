"""What token selection's kernels and its eager baseline share: the section table's size and the
CPU codec's finiteness check over a whole cache."""

from __future__ import annotations

import torch

from ...codecs.base import section_header
from ...errors import KVError

HDR = len(section_header([0, 0, 0]))  # 28: u32 count + three u64 lengths


def _require_finite(kv: torch.Tensor, codec: str) -> None:
    """The CPU codec's ``require_finite`` over the whole cache (dropped tokens too): one sync."""
    lo = kv.amin(dim=(2, 3, 4))
    hi = kv.amax(dim=(2, 3, 4))
    bad = ~(torch.isfinite(lo) & torch.isfinite(hi))
    if bool(bad.any()):
        layer, which = (int(x) for x in bad.nonzero()[0])
        raise KVError(f"codec {codec!r}: NaN/Inf value(s) in layer {layer} {('keys', 'values')[which]}")
