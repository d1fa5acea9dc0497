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
import triton
import triton.language as tl

from ...codecs import LayerKV
from ...codecs.base import LayerContext, require_finite
from ...codecs.bitpack import pack, packed_size
from ...codecs.kivi import split_points
from ...codecs.quant import SCALE_DTYPES, Quantized, dequantize, quantize
from ...errors import CodecError, KVError, WireError
from ..base import GpuPayloads, KernelCodec, Stats, check_cache, register_kernel
from ..launch import fp_args, header_tensor, interpreted, triton_cdiv
from ..layout import SectionTable
from ..wordpack import (DTYPE_CODE, SCALE_CODE, as_dtype, device_bytes, float_to_bits, floor_pow2, load_item,
                         load_scale, load_words, minmax_codes, minmax_params, nanmax, native, needs_clamp, pack_words,
                         pow2, quantize_rows, raw_view, refuse_nonfinite, row_scales, store_item, store_scale,
                         store_words, unpack_on_device, unpack_words, words_view)

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


@triton.jit
def keys_encode_kernel(x_ptr, raw_ptr, u8, p16, p32, H, S, N_K, N_GROUPS, N_CB, LAYER_BYTES, KC_OFF, KS_OFF, KZ_OFF,
                       KR_OFF, D: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, CB: tl.constexpr,
                       BITS: tl.constexpr, DT: tl.constexpr, SDT: tl.constexpr, WORDS: tl.constexpr,
                       NATIVE: tl.constexpr):
    """Keys of one (layer, head): program (chunk * N_CB + channel block, layer * H + head) holds
    tokens [chunk * G, chunk * G + G) x channels [cb * CB, cb * CB + CB) as a [GP, W, E] tile.
    Chunks below N_GROUPS are quantized per channel (``x_ptr``: the cache in its dtype); the rest
    are the key residual, copied as raw bits (``raw_ptr``: the same memory as int16/int32)."""
    E: tl.constexpr = 32 // BITS
    W: tl.constexpr = CB // E
    QMAX: tl.constexpr = (1 << BITS) - 1.0
    SW: tl.constexpr = 2 if SDT == 2 else 1  # int16 units per scale (SW) and per cache element (IW)
    IW: tl.constexpr = 2 if DT == 2 else 1
    ROW_BYTES: tl.constexpr = D * BITS // 8
    CB_BYTES: tl.constexpr = CB * BITS // 8
    chunk = tl.program_id(0) // N_CB
    cb = tl.program_id(0) % N_CB
    layer = (tl.program_id(1) // H).to(tl.int64)
    head = (tl.program_id(1) % H).to(tl.int64)
    t0 = chunk * G
    r = tl.arange(0, GP)
    ch = cb * CB + tl.arange(0, W)[:, None] * E + tl.arange(0, E)[None, :]  # [W, E] channels
    col = ch[None, :, :]
    row_ok = (r < G) & (t0 + r < S)
    ok = row_ok[:, None, None] & (col < D)
    base_x = ((layer * 2) * H + head) * S * D + t0 * D  # int64 scalar; per-element offsets stay int32
    off = r[:, None, None] * D + col
    lb = layer * LAYER_BYTES
    if chunk < N_GROUPS:
        x = tl.load(x_ptr + base_x + off, mask=ok, other=0.0).to(tl.float32)
        if GP == G:  # every token row is real (padded channels only spoil their own, unstored, scales)
            lo = tl.min(x, axis=0)
            hi = nanmax(x, 0, NATIVE)
        else:
            lo = tl.min(tl.where(ok, x, float("inf")), axis=0)
            hi = nanmax(tl.where(ok, x, float("-inf")), 0, NATIVE)
        z, s, inv = minmax_params(lo, hi, QMAX, SDT)
        c = minmax_codes(x, z[None, :, :], inv[None, :, :], QMAX, NATIVE)
        base = lb + KC_OFF + (head * N_K + t0) * ROW_BYTES + cb * CB_BYTES
        store_words(u8, p32, base, r * ROW_BYTES, pack_words(c, BITS, E), row_ok, ROW_BYTES - cb * CB_BYTES, W, WORDS)
        at = ((head * N_GROUPS + chunk) * D + ch) * SW  # [W, E] scale index, int16 units
        store_scale(p16, (lb + KS_OFF) // 2 + at, s, ch < D, SDT)
        store_scale(p16, (lb + KZ_OFF) // 2 + at, z, ch < D, SDT)
    else:
        res_at = (lb + KR_OFF) // 2 + ((head * (S - N_K) + t0 - N_K) * D) * IW
        store_item(p16, res_at + off * IW, tl.load(raw_ptr + base_x + off, mask=ok, other=0), ok, DT == 2)


@triton.jit
def keys_decode_kernel(u8, p16, p32, out_ptr, H, S, N_K, N_GROUPS, N_CB, LAYER_BYTES, KC_OFF, KS_OFF, KZ_OFF, KR_OFF,
                       LIMIT, D: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, CB: tl.constexpr,
                       BITS: tl.constexpr, DT: tl.constexpr, SDT: tl.constexpr, WORDS: tl.constexpr,
                       NATIVE: tl.constexpr, CLAMP: tl.constexpr):
    """Inverse of ``keys_encode_kernel`` on the same grid: codes * scale + zero (clamped to the
    dtype's range as ``dequantize`` does, where ``CLAMP`` says it can matter), or the residual's raw
    bits, into ``out`` (raw view)."""
    E: tl.constexpr = 32 // BITS
    W: tl.constexpr = CB // E
    SW: tl.constexpr = 2 if SDT == 2 else 1
    IW: tl.constexpr = 2 if DT == 2 else 1
    ROW_BYTES: tl.constexpr = D * BITS // 8
    CB_BYTES: tl.constexpr = CB * BITS // 8
    chunk = tl.program_id(0) // N_CB
    cb = tl.program_id(0) % N_CB
    layer = (tl.program_id(1) // H).to(tl.int64)
    head = (tl.program_id(1) % H).to(tl.int64)
    t0 = chunk * G
    r = tl.arange(0, GP)
    ch = cb * CB + tl.arange(0, W)[:, None] * E + tl.arange(0, E)[None, :]
    col = ch[None, :, :]
    row_ok = (r < G) & (t0 + r < S)
    ok = row_ok[:, None, None] & (col < D)
    off = r[:, None, None] * D + col
    dst = out_ptr + (((layer * 2) * H + head) * S * D + t0 * D) + off
    lb = layer * LAYER_BYTES
    if chunk < N_GROUPS:
        at = ((head * N_GROUPS + chunk) * D + ch) * SW
        s = load_scale(p16, (lb + KS_OFF) // 2 + at, ch < D, SDT)
        z = load_scale(p16, (lb + KZ_OFF) // 2 + at, ch < D, SDT)
        base = lb + KC_OFF + (head * N_K + t0) * ROW_BYTES + cb * CB_BYTES
        word = load_words(u8, p32, base, r * ROW_BYTES, row_ok, ROW_BYTES - cb * CB_BYTES, W, WORDS)
        x = unpack_words(word, BITS, E).to(tl.float32) * s[None, :, :] + z[None, :, :]
        if CLAMP:
            x = tl.minimum(tl.maximum(x, -LIMIT), LIMIT)
        tl.store(dst, float_to_bits(x, DT, NATIVE), mask=ok)
    else:
        res_at = (lb + KR_OFF) // 2 + ((head * (S - N_K) + t0 - N_K) * D) * IW
        tl.store(dst, load_item(p16, res_at + off * IW, ok, DT == 2), mask=ok)


@triton.jit
def values_encode_kernel(x_ptr, raw_ptr, u8, p16, p32, H, S, N_V, LAYER_BYTES, VC_OFF, VS_OFF, VZ_OFF, VR_OFF,
                         D: tl.constexpr, DPE: tl.constexpr, BLOCK_R: tl.constexpr, BITS: tl.constexpr,
                         DT: tl.constexpr, SDT: tl.constexpr, VG: tl.constexpr, NGV: tl.constexpr,
                         WORDS: tl.constexpr, NATIVE: tl.constexpr):
    """Values of one (layer, head): program (token block, layer * H + head) holds BLOCK_R tokens as
    a [BLOCK_R, W, E] tile; tokens below N_V are quantized per token (NGV groups of VG channels),
    the rest are the value residual, copied raw."""
    E: tl.constexpr = 32 // BITS
    W: tl.constexpr = DPE // E
    QMAX: tl.constexpr = (1 << BITS) - 1.0
    SW: tl.constexpr = 2 if SDT == 2 else 1
    IW: tl.constexpr = 2 if DT == 2 else 1
    ROW_BYTES: tl.constexpr = D * BITS // 8
    layer = (tl.program_id(1) // H).to(tl.int64)
    head = (tl.program_id(1) % H).to(tl.int64)
    t0 = tl.program_id(0) * BLOCK_R
    r = tl.arange(0, BLOCK_R)
    col = tl.arange(0, W)[None, :, None] * E + tl.arange(0, E)[None, None, :]
    row_ok = t0 + r < S
    ok = row_ok[:, None, None] & (col < D)
    base_x = ((layer * 2 + 1) * H + head) * S * D + t0 * D
    off = r[:, None, None] * D + col
    lb = layer * LAYER_BYTES
    # each branch loads its own rows (every element still read once): raw bits kept live across the
    # quantization for the residual's sake would cost registers in every program
    if t0 < N_V:
        q_ok = row_ok & (t0 + r < N_V)
        at = (head * N_V + t0) * (NGV * SW) + r * (NGV * SW)
        x = tl.load(x_ptr + base_x + off, mask=ok & q_ok[:, None, None], other=0.0).to(tl.float32)
        c = quantize_rows(x, col < D, col, p16, (lb + VS_OFF) // 2 + at, (lb + VZ_OFF) // 2 + at, q_ok, False, QMAX,
                          SDT, VG, NGV, DPE != D, NATIVE)
        base = lb + VC_OFF + (head * N_V + t0) * ROW_BYTES
        store_words(u8, p32, base, r * ROW_BYTES, pack_words(c, BITS, E), q_ok, ROW_BYTES, W, WORDS)
    if t0 + BLOCK_R > N_V:
        res_ok = ok & (t0 + r >= N_V)[:, None, None]
        res_at = (lb + VR_OFF) // 2 + ((head * (S - N_V) + t0 - N_V) * D) * IW
        store_item(p16, res_at + off * IW, tl.load(raw_ptr + base_x + off, mask=res_ok, other=0), res_ok, DT == 2)


@triton.jit
def values_decode_kernel(u8, p16, p32, out_ptr, H, S, N_V, LAYER_BYTES, VC_OFF, VS_OFF, VZ_OFF, VR_OFF, LIMIT,
                         D: tl.constexpr, DPE: tl.constexpr, BLOCK_R: tl.constexpr, BITS: tl.constexpr,
                         DT: tl.constexpr, SDT: tl.constexpr, VG: tl.constexpr, NGV: tl.constexpr,
                         WORDS: tl.constexpr, NATIVE: tl.constexpr, CLAMP: tl.constexpr):
    """Inverse of ``values_encode_kernel`` on the same grid."""
    E: tl.constexpr = 32 // BITS
    W: tl.constexpr = DPE // E
    SW: tl.constexpr = 2 if SDT == 2 else 1
    IW: tl.constexpr = 2 if DT == 2 else 1
    ROW_BYTES: tl.constexpr = D * BITS // 8
    layer = (tl.program_id(1) // H).to(tl.int64)
    head = (tl.program_id(1) % H).to(tl.int64)
    t0 = tl.program_id(0) * BLOCK_R
    r = tl.arange(0, BLOCK_R)
    col = tl.arange(0, W)[None, :, None] * E + tl.arange(0, E)[None, None, :]
    row_ok = t0 + r < S
    ok = row_ok[:, None, None] & (col < D)
    off = r[:, None, None] * D + col
    dst = out_ptr + (((layer * 2 + 1) * H + head) * S * D + t0 * D) + off
    lb = layer * LAYER_BYTES
    if t0 < N_V:
        q_ok = row_ok & (t0 + r < N_V)
        at = (head * N_V + t0) * (NGV * SW) + r * (NGV * SW)
        s, z = row_scales(p16, (lb + VS_OFF) // 2 + at, (lb + VZ_OFF) // 2 + at, col, q_ok, False, SDT, VG, NGV)
        base = lb + VC_OFF + (head * N_V + t0) * ROW_BYTES
        word = load_words(u8, p32, base, r * ROW_BYTES, q_ok, ROW_BYTES, W, WORDS)
        x = unpack_words(word, BITS, E).to(tl.float32) * s + z
        if CLAMP:
            x = tl.minimum(tl.maximum(x, -LIMIT), LIMIT)
        tl.store(dst, float_to_bits(x, DT, NATIVE), mask=ok & q_ok[:, None, None])
    if t0 + BLOCK_R > N_V:
        res_ok = ok & (t0 + r >= N_V)[:, None, None]
        res_at = (lb + VR_OFF) // 2 + ((head * (S - N_V) + t0 - N_V) * D) * IW
        tl.store(dst, load_item(p16, res_at + off * IW, res_ok, DT == 2), mask=res_ok)


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
        if payloads.offsets != tuple(i * lay.layer_bytes for i in range(n + 1)):
            raise WireError(f"codec {self.name!r}: {data.numel()} payload bytes in {payloads.n_layers} layers, "
                            f"expected {n} layers of {lay.layer_bytes} for shape {list(shape)}")
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
        n, h, _, d = check_cache(kv)
        lay = self.layout(tuple(kv.shape), kv.dtype)
        g, bits, vg, n_k, n_v = lay.group, self.bits, lay.value_group, lay.n_k, lay.n_v
        sdt = SCALE_DTYPES[self.params["scale_dtype"]]
        header = header_tensor(lay.header, str(kv.device))
        parts = []
        for i, layer in enumerate(kv):
            k, v = layer[0], layer[1]
            require_finite(LayerKV(k, v), LayerContext(i, n, kv.dtype, (h, lay.seq, d)), self.name)  # as the CPU
            try:
                qk = quantize(k[:, :n_k].reshape(h, n_k // g, g, d), bits, dim=2, scale_dtype=sdt)
                qv = quantize(v[:, :n_v].reshape(h, n_v, d // vg, vg), bits, dim=3, scale_dtype=sdt)
            except CodecError as exc:
                raise CodecError(f"codec {self.name!r}: {exc}") from exc
            parts.append(header)
            for q, rest in ((qk, k[:, n_k:]), (qv, v[:, n_v:])):
                parts += [pack(q.codes, bits), device_bytes(q.scale), device_bytes(q.zero), device_bytes(rest)]
        return GpuPayloads.equal_slots(torch.cat(parts), n)

    def decode_eager(self, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n, _, h, s, d = shape
        lay = self.layout(tuple(shape), dtype)
        g, bits, vg, n_k, n_v = lay.group, self.bits, lay.value_group, lay.n_k, lay.n_v
        sdt = SCALE_DTYPES[self.params["scale_dtype"]]
        sizes, offs = lay.sections, lay.offsets()
        names = [f"{t}_{x}" for t in "kv" for x in ("codes", "scales", "zeros", "residual")]
        out = torch.empty(shape, dtype=dtype, device=payloads.data.device)
        for i in range(n):
            raw = payloads.layer(i)
            sec = {name: raw[offs[name]:offs[name] + size] for name, size in zip(names, sizes)}
            for j, (t, n_q, qshape, sshape) in enumerate((("k", n_k, (h, n_k // g, g, d), (h, n_k // g, 1, d)),
                                                          ("v", n_v, (h, n_v, d // vg, vg), (h, n_v, d // vg, 1)))):
                codes = unpack_on_device(sec[f"{t}_codes"], bits, h * n_q * d).reshape(qshape)
                scale, zero = (as_dtype(sec[f"{t}_{x}"], sdt, sshape) for x in ("scales", "zeros"))
                q = Quantized(codes, scale, zero)
                out[i, j, :, :n_q] = dequantize(q, bits, dtype).reshape(h, n_q, d)
                out[i, j, :, n_q:] = as_dtype(sec[f"{t}_residual"], dtype, (h, s - n_q, d))
        return out
