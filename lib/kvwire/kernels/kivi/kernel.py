"""Fused Triton kernels for ``kivi2`` / ``kivi4`` (``codecs/kivi.py``): the CPU codec's 8 sections per
layer, written in place, byte for byte.

Two launches per cache encode (and two decode), each over every layer, plus the section tables:
- keys, grid (token group x channel block, layer x head): a program holds ``group_size`` tokens of
  a block of channels, reduces each channel's min/max over the group in registers, writes that
  group's scales and zero points (one run of channels) and the group's packed codes (whole 32-bit
  words where the payload is 4-aligned). Programs past the last full group copy the key residual
  (the ``S - n_k`` most recent tokens) bit for bit;
- values, grid (token block, layer x head): a program holds ``BLOCK_R`` tokens of one head, one
  scale and zero point per token (or per ``value_group_size`` channels), packed codes; tokens from
  ``n_v`` on are the value residual, copied bit for bit.
Every element of the cache is read once and every payload byte written once. Decode mirrors it.

Exact, for the reasons in ``token/jit.py``: correctly rounded divisions, round-half-even, no FMA
contraction, scales rounded to their dtype as torch does (-0.0 made +0.0 like ``codecs/quant.py``),
decode products ``code * scale`` exact in float32 for float16/bfloat16 scales (and not contracted for
float32 ones). Residual tokens are moved as raw bits. Parameters: any ``group_size`` up to
``MAX_GROUP``, any ``residual``, any ``value_group_size`` (the group is the CPU codec's
``value_group``: the largest divisor of head_dim not above it), any ``scale_dtype``; head_dim must be
a multiple of 8 (a row's codes then start on a byte). Differs: nothing in the bytes; a value group
count above 1 costs one masked pass per group: the default 32-channel groups (KIVI's) make 2 at
head_dim 64, 4 at 128 and 8 at 256; ``value_group_size=0`` (``kivi4_tokenwise``) makes one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ...codecs.bitpack import packed_size
from ...codecs.kivi import split_points
from ...codecs.quant import SCALE_DTYPES
from ...errors import CodecError, KVError, WireError
from ..base import GpuPayloads, KernelCodec, Stats, check_cache, register_kernel
from ..launch import fp_args, header_tensor, interpreted, triton_cdiv
from ..layout import SectionTable
from ..wordpack import (DTYPE_CODE, SCALE_CODE, floor_pow2, native, needs_clamp, pow2, raw_view, refuse_nonfinite,
                        words_view)
from . import eager
from .jit import keys_decode_kernel, keys_encode_kernel, values_decode_kernel, values_encode_kernel

MAX_GROUP = 512  # tokens per key group a program holds in registers
# GPU launch knobs per kernel: (elements per program, warps). First guesses from the per-token
# kernels' H200 sweep (bench/NOTES.md: small programs, 1-2 warps); sweep them on the device.
LAUNCH = {"keys_encode": (2048, 2), "values_encode": (1024, 1), "keys_decode": (2048, 2), "values_decode": (1024, 2)}
INTERPRETED_ELEMENTS = 8192  # the interpreter's cost is per program: fewer, larger ones


@dataclass(frozen=True)
class KiviLayout(SectionTable):
    """Byte layout of one layer's payload: ``codecs/kivi.py``'s 8 sections for a [heads, seq, head_dim]
    layer. Every layer of a cache has the same one (section sizes depend on shape and params only)."""

    SECTION_NAMES = tuple(f"{t}_{n}" for t in "kv" for n in ("codes", "scales", "zeros", "residual"))

    heads: int
    seq: int
    head_dim: int
    bits: int
    group: int  # tokens per key group
    residual: int
    value_group: int  # channels per value group (``codecs.kivi.value_group``: head_dim when the param is 0)
    item: int  # bytes per cache element
    scale_item: int  # bytes per scale / zero point

    @property
    def n_k(self) -> int:
        return split_points(self.seq, self.group, self.residual)[0]

    @property
    def n_v(self) -> int:
        return split_points(self.seq, self.group, self.residual)[1]

    @property
    def sections(self) -> list[int]:
        h, s, d = self.heads, self.seq, self.head_dim
        n_k, n_v = self.n_k, self.n_v
        k_scales = h * (n_k // self.group) * d * self.scale_item
        v_scales = h * n_v * (d // self.value_group) * self.scale_item
        return [packed_size(h * n_k * d, self.bits), k_scales, k_scales, h * (s - n_k) * d * self.item,
                packed_size(h * n_v * d, self.bits), v_scales, v_scales, h * (s - n_v) * d * self.item]


def _words_ok(lay: KiviLayout, codes_off: int) -> bool:
    """Whole-word code access: every row of codes starts 4-aligned in every layer."""
    return lay.layer_bytes % 4 == 0 and codes_off % 4 == 0 and (lay.head_dim * lay.bits // 8) % 4 == 0


@register_kernel
class KiviKernel(KernelCodec):
    """kivi2 / kivi4 with any group_size <= MAX_GROUP, residual, value_group_size and scale_dtype."""

    names = ("kivi2", "kivi4")

    @classmethod
    def supports(cls, name: str, params: Mapping[str, Any]) -> bool:
        return 1 <= params["group_size"] <= MAX_GROUP

    @classmethod
    def limits(cls) -> str:
        return (f"it implements group_size 1..{MAX_GROUP}, any residual, value_group_size and scale_dtype "
                "(head_dim a multiple of 8)")

    @property
    def bits(self) -> int:
        return self.codec.tensor.bits

    def layout(self, shape: tuple[int, ...], dtype: torch.dtype) -> KiviLayout:
        _, _, h, s, d = shape
        if d % 8:
            raise CodecError(f"the {self.name} kernel needs head_dim divisible by 8, got {d}")
        p = self.params
        return KiviLayout(h, s, d, self.bits, p["group_size"], p["residual"], self.codec.tensor._value_group(d),
                          torch.empty((), dtype=dtype).element_size(), SCALE_DTYPES[p["scale_dtype"]].itemsize)

    # ---- launches -------------------------------------------------------------------------------

    def _common(self, lay: KiviLayout, dtype: torch.dtype) -> dict:
        return {"D": lay.head_dim, "BITS": self.bits, "DT": DTYPE_CODE[dtype],
                "SDT": SCALE_CODE[self.params["scale_dtype"]], "NATIVE": native()}

    def _keys_args(self, lay: KiviLayout, op: str) -> tuple[int, dict, dict]:
        """(programs per (layer, head), run-time args, compile-time args and launch options)."""
        off, e = lay.offsets(), 32 // self.bits
        gp, dpe = pow2(lay.group), max(e, pow2(lay.head_dim))
        tile, warps = LAUNCH[f"keys_{op}"]
        cb = dpe if interpreted() else min(dpe, max(e, floor_pow2(tile // gp)))
        n_cb = triton_cdiv(lay.head_dim, cb)
        args = {"H": lay.heads, "S": lay.seq, "N_K": lay.n_k, "N_GROUPS": lay.n_k // lay.group, "N_CB": n_cb,
                "LAYER_BYTES": lay.layer_bytes, "KC_OFF": off["k_codes"], "KS_OFF": off["k_scales"],
                "KZ_OFF": off["k_zeros"], "KR_OFF": off["k_residual"]}
        meta = {"G": lay.group, "GP": gp, "CB": cb, "WORDS": _words_ok(lay, off["k_codes"])}
        return triton_cdiv(lay.seq, lay.group) * n_cb, args, {**meta, **fp_args(warps)}

    def _values_args(self, lay: KiviLayout, op: str) -> tuple[int, dict, dict]:
        off, e = lay.offsets(), 32 // self.bits
        dpe = max(e, pow2(lay.head_dim))
        tile, warps = LAUNCH[f"values_{op}"]
        block_r = min(floor_pow2((INTERPRETED_ELEMENTS if interpreted() else tile) // dpe), pow2(lay.seq))
        args = {"H": lay.heads, "S": lay.seq, "N_V": lay.n_v, "LAYER_BYTES": lay.layer_bytes,
                "VC_OFF": off["v_codes"], "VS_OFF": off["v_scales"], "VZ_OFF": off["v_zeros"],
                "VR_OFF": off["v_residual"]}
        meta = {"DPE": dpe, "BLOCK_R": block_r, "VG": lay.value_group, "NGV": lay.head_dim // lay.value_group,
                "WORDS": _words_ok(lay, off["v_codes"])}
        return triton_cdiv(lay.seq, block_r), args, {**meta, **fp_args(warps)}

    def encode(self, kv: torch.Tensor, stats: Stats = None, *, out: torch.Tensor | None = None,
               check: bool = True) -> GpuPayloads:
        n, h, s, _ = check_cache(kv)
        lay = self.layout(tuple(kv.shape), kv.dtype)
        kv = kv.contiguous()
        if out is None:
            out = torch.empty(n * lay.layer_bytes, dtype=torch.uint8, device=kv.device)
        if out.numel() != n * lay.layer_bytes or out.dtype != torch.uint8:
            raise CodecError(f"payload buffer holds {out.numel()} {out.dtype}, need {n * lay.layer_bytes} uint8")
        out.view(n, lay.layer_bytes)[:, :len(lay.header)] = header_tensor(lay.header, str(kv.device))
        if n and h and s:
            raw, p16, p32, common = raw_view(kv), out.view(torch.int16), words_view(out), self._common(lay, kv.dtype)
            blocks, args, meta = self._keys_args(lay, "encode")
            keys_encode_kernel[(blocks, n * h)](kv, raw, out, p16, p32, **args, **common, **meta)
            blocks, args, meta = self._values_args(lay, "encode")
            values_encode_kernel[(blocks, n * h)](kv, raw, out, p16, p32, **args, **common, **meta)
            if check:
                self._check_encoded(kv, out, lay)
        return GpuPayloads.equal_slots(out, n)

    def _check_encoded(self, kv: torch.Tensor, out: torch.Tensor, lay: KiviLayout) -> None:
        """One sync: every scale and zero point finite (NaN/Inf in a quantized group makes them so)
        and the key residual finite (it holds the value residual's tokens too, as n_k <= n_v)."""
        off = lay.offsets()
        sdt = SCALE_DTYPES[self.params["scale_dtype"]]
        per_layer = out.view(kv.shape[0], lay.layer_bytes)
        fine = torch.isfinite(kv[:, :, :, lay.n_k:]).all()
        for a, b in (("k_scales", "k_residual"), ("v_scales", "v_residual")):
            fine = fine & torch.isfinite(per_layer[:, off[a]:off[b]].contiguous().view(sdt)).all()
        if not bool(fine):
            refuse_nonfinite(self.name, kv, sdt)

    def decode(self, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype, *,
               out: torch.Tensor | None = None, check: bool = True) -> torch.Tensor:
        n, _, h, s, _ = shape
        if dtype not in DTYPE_CODE:
            raise KVError(f"the {self.name} GPU decode writes fp16, bf16 or fp32, not {dtype}")
        lay = self.layout(tuple(shape), dtype)
        data = payloads.data
        payloads.require_equal_slots(n, lay.layer_bytes, self.name, shape)
        if check:
            self._check_payload(data, lay, n)
        if out is None:
            out = torch.empty(shape, dtype=dtype, device=data.device)
        if n and h and s:
            o, p16, p32, common = raw_view(out), data.view(torch.int16), words_view(data), self._common(lay, dtype)
            extra = {"LIMIT": torch.finfo(dtype).max, "CLAMP": needs_clamp(self.params["scale_dtype"], dtype)}
            blocks, args, meta = self._keys_args(lay, "decode")
            keys_decode_kernel[(blocks, n * h)](data, p16, p32, o, **args, **common, **meta, **extra)
            blocks, args, meta = self._values_args(lay, "decode")
            values_decode_kernel[(blocks, n * h)](data, p16, p32, o, **args, **common, **meta, **extra)
        return out

    def _check_payload(self, data: torch.Tensor, lay: KiviLayout, n: int) -> None:
        """One sync: every layer's section table is the shape's, and its scales/zeros are finite."""
        off = lay.offsets()
        per_layer = data.view(n, lay.layer_bytes)
        header = header_tensor(lay.header, str(data.device))
        table = (per_layer[:, :len(lay.header)] == header).all()
        sdt = SCALE_DTYPES[self.params["scale_dtype"]]
        fine = torch.ones((), dtype=torch.bool, device=data.device)
        for a, b in (("k_scales", "k_residual"), ("v_scales", "v_residual")):
            fine = fine & torch.isfinite(per_layer[:, off[a]:off[b]].contiguous().view(sdt)).all()
        ok = torch.stack([table, fine]).cpu()
        if not bool(ok[0]):
            raise WireError(f"codec {self.name!r}: a payload's section table does not match shape "
                            f"[{n}, 2, {lay.heads}, {lay.seq}, {lay.head_dim}]")
        if not bool(ok[1]):
            raise WireError(f"codec {self.name!r}: non-finite scale or zero point in the payload")

    # ---- the eager baseline: the CPU codec's torch ops, run on the device ----------------------

    def encode_eager(self, kv: torch.Tensor, stats: Stats = None) -> GpuPayloads:
        return eager.encode_eager(self, kv, stats)

    def decode_eager(self, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return eager.decode_eager(self, payloads, shape, dtype)
