"""A fused Triton kernel for ``k8v4`` (``codecs/k8v4.py``): keys int8 symmetric, values int4 min-max,
writing the CPU codec's 5 sections per layer in place, byte for byte.

One launch per cache encode (and one decode) on the grid (row block, layer * 2 + K/V) of the per-token
kernels (``token/jit.py``, no per-row div/mod): a program holds ``BLOCK_R`` (head, token) rows of
K or V, reduces each row (or each group of ``*_group_size`` channels) in registers and writes codes
(whole 32-bit words where 4-aligned: 4 int8 codes or 8 int4 codes a word) and scales (and zero
points) straight to their offsets. K and V programs take different branches of one kernel.

Exact, for the reasons in ``token/jit.py``: correctly rounded divisions, round-half-even, no FMA
contraction, scales rounded to their dtype as torch does. Supported: ``key_granularity`` and
``value_granularity`` ``token`` or ``group`` (any group size dividing head_dim), any ``scale_dtype``;
head_dim a multiple of 8. Not implemented: ``channel`` granularity (a reduction over the whole
sequence, across programs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ...codecs.bitpack import packed_size
from ...codecs.quant import SCALE_DTYPES
from ...errors import CodecError, KVError, WireError
from ..base import GpuPayloads, KernelCodec, Stats, check_cache, register_kernel
from ..launch import fp_args, header_tensor, interpreted, triton_cdiv
from ..layout import SectionTable
from ..wordpack import (DTYPE_CODE, SCALE_CODE, floor_pow2, native, needs_clamp, pow2, raw_view, refuse_nonfinite,
                        words_view)
from . import eager
from .jit import k8v4_decode_kernel, k8v4_encode_kernel

GRANULARITIES = ("token", "group")
# GPU launch knobs: (elements per program, warps); the per-token int8/int4 kernels' best on an H200
LAUNCH = {"encode": (1024, 1), "decode": (1024, 2)}
INTERPRETED_ELEMENTS = 8192  # the interpreter's cost is per program: fewer, larger ones


@dataclass(frozen=True)
class K8V4Layout(SectionTable):
    """Byte layout of one layer's payload: ``[k codes, k scales, v codes, v scales, v zeros]``."""

    SECTION_NAMES = ("k_codes", "k_scales", "v_codes", "v_scales", "v_zeros")

    heads: int
    seq: int
    head_dim: int
    key_group: int  # channels per key scale (head_dim for per-token)
    value_group: int
    scale_item: int

    @property
    def rows(self) -> int:
        return self.heads * self.seq

    @property
    def sections(self) -> list[int]:
        n, d = self.rows, self.head_dim
        vs = n * (d // self.value_group) * self.scale_item
        return [n * d, n * (d // self.key_group) * self.scale_item, packed_size(n * d, 4), vs, vs]


@register_kernel
class K8V4Kernel(KernelCodec):
    """k8v4 with token or group granularity for keys and values and any scale_dtype."""

    names = ("k8v4",)

    @classmethod
    def supports(cls, name: str, params: Mapping[str, Any]) -> bool:
        return params["key_granularity"] in GRANULARITIES and params["value_granularity"] in GRANULARITIES

    @classmethod
    def limits(cls) -> str:
        return "it implements key/value granularity token or group (not channel), any group size and scale_dtype"

    def layout(self, shape: tuple[int, ...], dtype: torch.dtype) -> K8V4Layout:
        _, _, h, s, d = shape
        if d % 8:
            raise CodecError(f"the k8v4 kernel needs head_dim divisible by 8, got {d}")
        self.codec.tensor._check_groups(d, CodecError)
        p = self.params
        groups = [p[f"{half}_group_size"] if p[f"{half}_granularity"] == "group" else d for half in ("key", "value")]
        return K8V4Layout(h, s, d, groups[0], groups[1], SCALE_DTYPES[p["scale_dtype"]].itemsize)

    def _meta(self, lay: K8V4Layout, dtype: torch.dtype, op: str) -> tuple[int, dict]:
        off, d = lay.offsets(), lay.head_dim
        dp = max(8, pow2(d))
        tile, warps = LAUNCH[op]
        block_r = min(floor_pow2((INTERPRETED_ELEMENTS if interpreted() else tile) // dp), pow2(lay.rows))
        aligned = lay.layer_bytes % 4 == 0
        meta = {"ROWS": lay.rows, "LAYER_BYTES": lay.layer_bytes, "KC_OFF": off["k_codes"], "KS_OFF": off["k_scales"],
                "VC_OFF": off["v_codes"], "VS_OFF": off["v_scales"], "VZ_OFF": off["v_zeros"], "D": d, "DP": dp,
                "BLOCK_R": block_r, "SDT": SCALE_CODE[self.params["scale_dtype"]], "KG": lay.key_group,
                "VG": lay.value_group, "K_WORDS": aligned and off["k_codes"] % 4 == 0 and d % 4 == 0,
                "V_WORDS": aligned and off["v_codes"] % 4 == 0 and (d // 2) % 4 == 0, "NATIVE": native()}
        if op == "decode":
            meta.update(DT=DTYPE_CODE[dtype], LIMIT=torch.finfo(dtype).max,
                        CLAMP=needs_clamp(self.params["scale_dtype"], dtype))
        return triton_cdiv(lay.rows, block_r), {**meta, **fp_args(warps)}

    def encode(self, kv: torch.Tensor, stats: Stats = None, *, out: torch.Tensor | None = None,
               check: bool = True) -> GpuPayloads:
        n = check_cache(kv)[0]
        lay = self.layout(tuple(kv.shape), kv.dtype)
        kv = kv.contiguous()
        if out is None:
            out = torch.empty(n * lay.layer_bytes, dtype=torch.uint8, device=kv.device)
        if out.numel() != n * lay.layer_bytes or out.dtype != torch.uint8:
            raise CodecError(f"payload buffer holds {out.numel()} {out.dtype}, need {n * lay.layer_bytes} uint8")
        out.view(n, lay.layer_bytes)[:, :len(lay.header)] = header_tensor(lay.header, str(kv.device))
        if n and lay.rows:
            blocks, meta = self._meta(lay, kv.dtype, "encode")
            k8v4_encode_kernel[(blocks, 2 * n)](kv, out, out.view(torch.int16), words_view(out), **meta)
            if check:
                sdt = SCALE_DTYPES[self.params["scale_dtype"]]
                if not bool(self._scales_finite(out, lay, n)):
                    refuse_nonfinite(self.name, kv, sdt)
        return GpuPayloads.equal_slots(out, n)

    def _scales_finite(self, data: torch.Tensor, lay: K8V4Layout, n: int) -> torch.Tensor:
        off, sdt = lay.offsets(), SCALE_DTYPES[self.params["scale_dtype"]]
        per_layer = data.view(n, lay.layer_bytes)
        ks = per_layer[:, off["k_scales"]:off["v_codes"]]
        vsz = per_layer[:, off["v_scales"]:]
        return torch.isfinite(ks.contiguous().view(sdt)).all() & torch.isfinite(vsz.contiguous().view(sdt)).all()

    def decode(self, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype, *,
               out: torch.Tensor | None = None, check: bool = True) -> torch.Tensor:
        n = shape[0]
        if dtype not in DTYPE_CODE:
            raise KVError(f"the k8v4 GPU decode writes fp16, bf16 or fp32, not {dtype}")
        lay = self.layout(tuple(shape), dtype)
        data = payloads.data
        payloads.require_equal_slots(n, lay.layer_bytes, "k8v4", shape)
        if check:
            self._check_payload(data, lay, n)
        if out is None:
            out = torch.empty(shape, dtype=dtype, device=data.device)
        if n and lay.rows:
            blocks, meta = self._meta(lay, dtype, "decode")
            k8v4_decode_kernel[(blocks, 2 * n)](data, data.view(torch.int16), words_view(data), raw_view(out), **meta)
        return out

    def _check_payload(self, data: torch.Tensor, lay: K8V4Layout, n: int) -> None:
        """One sync: section tables, finite scales/zeros, no key code -128 (what no encoder emits)."""
        off = lay.offsets()
        per_layer = data.view(n, lay.layer_bytes)
        table = (per_layer[:, :len(lay.header)] == header_tensor(lay.header, str(data.device))).all()
        codes = per_layer[:, off["k_codes"]:off["k_scales"]]
        ok = torch.stack([table, self._scales_finite(data, lay, n), ~(codes == 0x80).any()]).cpu()
        if not bool(ok[0]):
            raise WireError(f"codec 'k8v4': a payload's section table does not match shape "
                            f"[{n}, 2, {lay.heads}, {lay.seq}, {lay.head_dim}]")
        if not bool(ok[1]):
            raise WireError("codec 'k8v4': payload holds a non-finite scale or zero point")
        if not bool(ok[2]):
            raise WireError("codec 'k8v4': payload holds a key code outside -127..127")

    # ---- the eager baseline: the CPU codec's torch ops, run on the device ----------------------

    def encode_eager(self, kv: torch.Tensor, stats: Stats = None) -> GpuPayloads:
        return eager.encode_eager(self, kv, stats)

    def decode_eager(self, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return eager.decode_eager(self, payloads, shape, dtype)
