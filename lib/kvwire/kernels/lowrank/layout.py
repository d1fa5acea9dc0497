"""Low rank's payload layout and what the fused encode and the eager baseline share: the
device-side int4 quantization of the factors' rows and the CPU codec's finiteness check."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ...codecs import bitpack, quant
from ...codecs.base import section_header
from ...codecs.svd import _FACTOR_DTYPES, effective_rank
from ...errors import KVError


class LowRankLayout:
    """Section sizes of one layer's payload (the same for every layer of a cache)."""

    def __init__(self, name: str, params: Mapping[str, Any], h: int, s: int, d: int) -> None:
        self.int4 = name == "svd_runtime_int4"
        self.h, self.s, self.d = h, s, d
        self.r = effective_rank(params["rank"], s, d)
        if self.int4:
            self.group = params["group_size"]
            self.sdt = quant.SCALE_DTYPES[params["scale_dtype"]]
            se = torch.empty((), dtype=self.sdt).element_size()
            ngs, ngd = math.ceil(s / self.group), math.ceil(d / self.group)
            self.per_tensor = [8 * h, bitpack.packed_size(h * self.r * s, 4), h * self.r * ngs * se,
                               bitpack.packed_size(h * self.r * d, 4), h * self.r * ngd * se]
        else:
            self.group, self.fdt = 1, _FACTOR_DTYPES[params["factor_dtype"]]
            fe = torch.empty((), dtype=self.fdt).element_size()
            self.per_tensor = [8 * h, h * s * self.r * fe, h * self.r * d * fe]
        self.header = section_header(self.per_tensor * 2)
        self.tensor_bytes = sum(self.per_tensor)
        self.layer_bytes = len(self.header) + 2 * self.tensor_bytes
        starts = [sum(self.per_tensor[:i]) for i in range(len(self.per_tensor))]
        # offsets within a tensor's sections: A (factor or codes), B, and the int4 scales
        if self.int4:
            self.a_off, self.a_sc_off, self.b_off, self.b_sc_off = starts[1], starts[2], starts[3], starts[4]
        else:
            self.a_off, self.b_off = starts[1], starts[2]
            self.a_sc_off = self.b_sc_off = 0


def _quantize_rows(rows: torch.Tensor, group: int, sdt: torch.dtype, tensors: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``codecs/svd.quantize_rows`` on the device for ``tensors`` tensors' rows at once (rows
    [tensors * h, r, n]): packed codes [tensors, bytes] (each tensor packed on its own, as the CPU
    packs one tensor's codes) and scales [tensors, h * r * groups]."""
    b, r, n = rows.shape
    n_groups = math.ceil(n / group)
    padded = torch.nn.functional.pad(rows, (0, n_groups * group - n)).view(b, r, n_groups, group)
    q = _quantize_sym4(padded, sdt)
    codes = q.codes.view(b, r, n_groups * group)[:, :, :n]
    return _pack4_rows(codes.reshape(tensors, -1)), q.scale.reshape(tensors, -1)


def _quantize_sym4(x: torch.Tensor, sdt: torch.dtype) -> quant.Quantized:
    """``quant.quantize(x, 4, symmetric=True, scale_dtype=sdt)`` without its host-side finite check
    (factor entries lie in [-1, 1], so the scales are finite): the same ops, no sync."""
    xf = x.float()
    qmax = quant.levels(4, True)
    scale = (xf.abs().amax(dim=-1, keepdim=True) / qmax).to(sdt)
    s = scale.float()
    inv = torch.where(s > 0, 1.0 / s, torch.zeros_like(s))
    codes = torch.round(xf * inv).clamp_(-qmax, qmax).add_(qmax)
    return quant.Quantized(codes.to(torch.uint8), scale, None)


def _pack4_rows(codes: torch.Tensor) -> torch.Tensor:
    """``bitpack.pack(row, 4)`` of every row of ``codes`` [rows, n]: [rows, 4 * ceil(n / 8)] bytes."""
    rows, n = codes.shape
    padded = torch.nn.functional.pad(codes.to(torch.uint8), (0, (-n) % 8)).view(rows, -1, 2)
    return padded[:, :, 0] | (padded[:, :, 1] << 4)


def _require_finite(kv: torch.Tensor, codec: str) -> None:
    lo, hi = kv.amin(dim=(2, 3, 4)), kv.amax(dim=(2, 3, 4))
    bad = ~(torch.isfinite(lo) & torch.isfinite(hi))
    if bool(bad.any()):
        layer, which = (int(x) for x in bad.nonzero()[0])
        raise KVError(f"codec {codec!r}: NaN/Inf value(s) in layer {layer} {('keys', 'values')[which]}")
