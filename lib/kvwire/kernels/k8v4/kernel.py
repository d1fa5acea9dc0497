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
import triton
import triton.language as tl

from ...codecs.bitpack import pack, packed_size
from ...codecs.int8 import group_view
from ...codecs.quant import SCALE_DTYPES, Quantized, dequantize, quantize
from ...errors import CodecError, KVError, WireError
from ..base import GpuPayloads, KernelCodec, Stats, check_cache, register_kernel
from ..launch import fp_args, header_tensor, interpreted, triton_cdiv
from ..layout import SectionTable
from ..wordpack import (DTYPE_CODE, SCALE_CODE, as_dtype, device_bytes, float_to_bits, floor_pow2, load_words, native,
                         needs_clamp, pack_words, pow2, quantize_rows, raw_view, refuse_nonfinite, row_scales,
                         store_words, unpack_on_device, unpack_words, words_view)

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



@triton.jit
def k8v4_encode_kernel(x_ptr, u8, p16, p32, ROWS, LAYER_BYTES, KC_OFF, KS_OFF, VC_OFF, VS_OFF, VZ_OFF,
                       D: tl.constexpr, DP: tl.constexpr, BLOCK_R: tl.constexpr, SDT: tl.constexpr,
                       KG: tl.constexpr, VG: tl.constexpr, K_WORDS: tl.constexpr, V_WORDS: tl.constexpr,
                       NATIVE: tl.constexpr):
    """Rows [i0, i0 + BLOCK_R) of tensor t = layer * 2 + K/V (rows = head * seq + token): keys to
    int8 codes [BLOCK_R, DP/4, 4] and a scale per KG channels; values to packed int4 codes
    [BLOCK_R, DP/8, 8] and a scale and zero point per VG channels."""
    SW: tl.constexpr = 2 if SDT == 2 else 1
    t = tl.program_id(1)
    lb = (t // 2).to(tl.int64) * LAYER_BYTES
    i0 = tl.program_id(0).to(tl.int64) * BLOCK_R
    r = tl.arange(0, BLOCK_R)
    row_ok = i0 + r < ROWS
    src = x_ptr + (t.to(tl.int64) * ROWS + i0) * D
    if t % 2 == 0:  # keys; K and V tiles differ in shape, so nothing of either may outlive its branch
        k_col = tl.arange(0, DP // 4)[None, :, None] * 4 + tl.arange(0, 4)[None, None, :]
        k_ok = row_ok[:, None, None] & (k_col < D)
        k_x = tl.load(src + (r[:, None, None] * D + k_col), mask=k_ok, other=0.0).to(tl.float32)
        k_at = (lb + KS_OFF) // 2 + (i0 + r) * ((D // KG) * SW)
        k_c = quantize_rows(k_x, k_col < D, k_col, p16, k_at, k_at, row_ok, True, 127.0, SDT, KG, D // KG, DP != D,
                            NATIVE)
        store_words(u8, p32, lb + KC_OFF + i0 * D, r * D, pack_words(k_c, 8, 4), row_ok, D, DP // 4, K_WORDS)
    else:
        v_col = tl.arange(0, DP // 8)[None, :, None] * 8 + tl.arange(0, 8)[None, None, :]
        v_ok = row_ok[:, None, None] & (v_col < D)
        v_x = tl.load(src + (r[:, None, None] * D + v_col), mask=v_ok, other=0.0).to(tl.float32)
        v_at = (i0 + r) * ((D // VG) * SW)
        v_c = quantize_rows(v_x, v_col < D, v_col, p16, (lb + VS_OFF) // 2 + v_at, (lb + VZ_OFF) // 2 + v_at, row_ok,
                            False, 15.0, SDT, VG, D // VG, DP != D, NATIVE)
        store_words(u8, p32, lb + VC_OFF + i0 * (D // 2), r * (D // 2), pack_words(v_c, 4, 8), row_ok, D // 2,
                    DP // 8, V_WORDS)


@triton.jit
def k8v4_decode_kernel(u8, p16, p32, out_ptr, ROWS, LAYER_BYTES, KC_OFF, KS_OFF, VC_OFF, VS_OFF, VZ_OFF, LIMIT,
                       D: tl.constexpr, DP: tl.constexpr, BLOCK_R: tl.constexpr, DT: tl.constexpr,
                       SDT: tl.constexpr, KG: tl.constexpr, VG: tl.constexpr, K_WORDS: tl.constexpr,
                       V_WORDS: tl.constexpr, NATIVE: tl.constexpr, CLAMP: tl.constexpr):
    """Inverse of ``k8v4_encode_kernel`` on the same grid: keys code * scale, values code * scale +
    zero, clamped to the dtype's range where ``CLAMP`` says it can matter (``dequantize_per_token`` /
    ``dequantize``), written to ``out`` as raw bits."""
    SW: tl.constexpr = 2 if SDT == 2 else 1
    t = tl.program_id(1)
    lb = (t // 2).to(tl.int64) * LAYER_BYTES
    i0 = tl.program_id(0).to(tl.int64) * BLOCK_R
    r = tl.arange(0, BLOCK_R)
    row_ok = i0 + r < ROWS
    dst = out_ptr + (t.to(tl.int64) * ROWS + i0) * D
    if t % 2 == 0:
        k_col = tl.arange(0, DP // 4)[None, :, None] * 4 + tl.arange(0, 4)[None, None, :]
        k_at = (lb + KS_OFF) // 2 + (i0 + r) * ((D // KG) * SW)
        k_s, _ = row_scales(p16, k_at, k_at, k_col, row_ok, True, SDT, KG, D // KG)
        k_word = load_words(u8, p32, lb + KC_OFF + i0 * D, r * D, row_ok, D, DP // 4, K_WORDS)
        k_x = ((unpack_words(k_word, 8, 4) ^ 0x80) - 0x80).to(tl.float32) * k_s  # signed int8 codes
        if CLAMP:
            k_x = tl.minimum(tl.maximum(k_x, -LIMIT), LIMIT)
        tl.store(dst + (r[:, None, None] * D + k_col), float_to_bits(k_x, DT, NATIVE),
                 mask=row_ok[:, None, None] & (k_col < D))
    else:
        v_col = tl.arange(0, DP // 8)[None, :, None] * 8 + tl.arange(0, 8)[None, None, :]
        v_at = (i0 + r) * ((D // VG) * SW)
        v_s, v_z = row_scales(p16, (lb + VS_OFF) // 2 + v_at, (lb + VZ_OFF) // 2 + v_at, v_col, row_ok, False, SDT,
                              VG, D // VG)
        v_word = load_words(u8, p32, lb + VC_OFF + i0 * (D // 2), r * (D // 2), row_ok, D // 2, DP // 8, V_WORDS)
        v_x = unpack_words(v_word, 4, 8).to(tl.float32) * v_s + v_z
        if CLAMP:
            v_x = tl.minimum(tl.maximum(v_x, -LIMIT), LIMIT)
        tl.store(dst + (r[:, None, None] * D + v_col), float_to_bits(v_x, DT, NATIVE),
                 mask=row_ok[:, None, None] & (v_col < D))


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
        if payloads.offsets != tuple(i * lay.layer_bytes for i in range(n + 1)):
            raise WireError(f"codec 'k8v4': {data.numel()} payload bytes in {payloads.n_layers} layers, "
                            f"expected {n} layers of {lay.layer_bytes} for shape {list(shape)}")
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

    def _groups(self) -> tuple[tuple[str, int], tuple[str, int]]:
        p = self.params
        return ((p["key_granularity"], p["key_group_size"]), (p["value_granularity"], p["value_group_size"]))

    def encode_eager(self, kv: torch.Tensor, stats: Stats = None) -> GpuPayloads:
        n = check_cache(kv)[0]
        lay = self.layout(tuple(kv.shape), kv.dtype)
        sdt = SCALE_DTYPES[self.params["scale_dtype"]]
        (kgran, kg), (vgran, vg) = self._groups()
        header = header_tensor(lay.header, str(kv.device))
        parts = []
        for layer in kv:
            kview, kdim = group_view(layer[0], kgran, kg)
            vview, vdim = group_view(layer[1], vgran, vg)
            try:
                qk = quantize(kview, 8, dim=kdim, symmetric=True, scale_dtype=sdt)
                qv = quantize(vview, 4, dim=vdim, symmetric=False, scale_dtype=sdt)
            except CodecError:  # as the CPU codec: NaN/Inf in the layer (KVError), else a scale overflow
                refuse_nonfinite(self.name, layer, sdt)
            parts += [header, qk.codes.sub_(127).reshape(-1), device_bytes(qk.scale), pack(qv.codes, 4),
                      device_bytes(qv.scale), device_bytes(qv.zero)]
        return GpuPayloads.equal_slots(torch.cat(parts), n)

    def decode_eager(self, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n, _, h, s, d = shape
        lay = self.layout(tuple(shape), dtype)
        sdt = SCALE_DTYPES[self.params["scale_dtype"]]
        off, sizes = lay.offsets(), lay.sections
        names = ("k_codes", "k_scales", "v_codes", "v_scales", "v_zeros")
        kshape, vshape = (h, s, d // lay.key_group, lay.key_group), (h, s, d // lay.value_group, lay.value_group)
        limit = torch.finfo(dtype).max
        out = torch.empty(shape, dtype=dtype, device=payloads.data.device)
        for i in range(n):
            raw = payloads.layer(i)
            sec = {name: raw[off[name]:off[name] + size] for name, size in zip(names, sizes)}
            codes = sec["k_codes"].view(torch.int8).reshape(kshape)
            scale = as_dtype(sec["k_scales"], sdt, kshape[:3] + (1,))
            out[i, 0] = (codes.float() * scale.float()).clamp_(-limit, limit).to(dtype).reshape(h, s, d)
            scale, zero = (as_dtype(sec[f"v_{x}"], sdt, vshape[:3] + (1,)) for x in ("scales", "zeros"))
            q = Quantized(unpack_on_device(sec["v_codes"], 4, h * s * d).reshape(vshape), scale, zero)
            out[i, 1] = dequantize(q, 4, dtype).reshape(h, s, d)
        return out
