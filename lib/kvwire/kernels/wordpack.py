"""Triton helpers shared by the KIVI (``kivi.py``) and k8v4 (``k8v4.py``) kernels: raw element bits
in and out, scales rounded and stored as the CPU codec does, min-max / absmax quantization of a tile,
and codes packed into (or unpacked from) whole 32-bit words in ``codecs/bitpack.py``'s order.

Tiles are 3-D ``[rows, words, E]``: ``E = 32 // BITS`` codes make one little-endian word (code ``e``
in bits ``[BITS*e, BITS*(e+1))``, exactly ``bitpack.pack``'s order for 2-, 4- and 8-bit codes), so
a row's codes are built in registers and stored as words where the payload is 4-aligned, else as
bytes.

Payload access goes through an int16 view of the payload (every section of these codecs starts at an
even byte: the section table is 68 or 44 bytes and every section length is even for head_dim % 8 == 0);
4-byte items (float32 scales, float32 residual elements) are stored as two int16 halves, because their
sections need not be 4-aligned. Exactness rules are ``token/jit.py``'s: correctly rounded
divisions (``div_rn``), round-half-even by ``rint``, no FMA contraction (``_fp_args``), bf16
rounding on bit patterns; on a GPU (``NATIVE``) rounding to an integer is one ``cvt.rni`` and
bf16 output one ``cvt.rn.bf16`` (the same round-to-nearest-even; the interpreter lacks the first and
truncates in the second). NaN/Inf input: group maxima keep NaNs (``nanmax``) and an Inf makes the
range infinite, so any non-finite element leaves a non-finite scale or zero point, which the host's
check (one sync, ``check=True``) turns into the CPU codec's error.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ..errors import CodecError, KVError
from .jit import bf16_bits, rint
from .launch import interpreted

DTYPE_CODE = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}  # the ``DT`` / ``SDT`` constexprs
SCALE_CODE = {"float16": 0, "bfloat16": 1, "float32": 2}


def raw_view(t: torch.Tensor) -> torch.Tensor:
    """The bits of a float tensor as int16 (2-byte dtypes) or int32 (float32): kernels load and store
    raw bits, so residual tokens are copied bit for bit whatever their value."""
    return t.view(torch.int32 if t.element_size() == 4 else torch.int16)


def words_view(buf: torch.Tensor) -> torch.Tensor:
    """int32 view for whole-word code access (any pointer does when the layout is not 4-aligned)."""
    return buf.view(torch.int32) if buf.numel() % 4 == 0 and buf.data_ptr() % 4 == 0 else buf


@triton.jit
def bits_to_float(bits, DT: tl.constexpr):
    """Raw element bits (int16 for fp16/bf16, int32 for fp32) -> float32, exactly."""
    if DT == 0:
        x = bits.to(tl.float16, bitcast=True).to(tl.float32)
    elif DT == 1:
        x = (bits.to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        x = bits.to(tl.float32, bitcast=True)
    return x


@triton.jit
def float_to_bits(x, DT: tl.constexpr, NATIVE: tl.constexpr):
    """float32 -> raw bits of dtype ``DT``, round to nearest even (torch's ``.to``). ``NATIVE``: the
    GPU's own cvt.rn.bf16 (the same rounding, fewer instructions); the interpreter uses bit patterns."""
    if DT == 0:
        b = x.to(tl.float16).to(tl.int16, bitcast=True)
    elif DT == 1:
        if NATIVE:
            b = x.to(tl.bfloat16).to(tl.int16, bitcast=True)
        else:
            b = bf16_bits(x).to(tl.int16)
    else:
        b = x.to(tl.int32, bitcast=True)
    return b


@triton.jit
def round_to(v, SDT: tl.constexpr):
    """float32 -> the float32 value of ``v`` rounded to the scale dtype, with -0.0 made +0.0
    (``codecs/quant.py``'s ``.to(scale_dtype) + 0.0``)."""
    if SDT == 0:
        r = v.to(tl.float16).to(tl.float32)
    elif SDT == 1:
        r = (bf16_bits(v) << 16).to(tl.float32, bitcast=True)
    else:
        r = v
    return r + 0.0


@triton.jit
def store_item(p16, at16, v, mask, WIDE: tl.constexpr):
    """Store raw bits ``v`` (int16, or int32 when ``WIDE``) at int16 index ``at16`` (a 4-byte item
    as two halves, low first: little-endian, whatever the alignment)."""
    if WIDE:
        tl.store(p16 + at16, (v & 0xFFFF).to(tl.int16), mask=mask)
        tl.store(p16 + at16 + 1, (v >> 16).to(tl.int16), mask=mask)
    else:
        tl.store(p16 + at16, v, mask=mask)


@triton.jit
def load_item(p16, at16, mask, WIDE: tl.constexpr):
    """Inverse of ``store_item``: raw bits as int16, or int32 when ``WIDE``."""
    if WIDE:
        lo = tl.load(p16 + at16, mask=mask, other=0).to(tl.int32) & 0xFFFF
        hi = tl.load(p16 + at16 + 1, mask=mask, other=0).to(tl.int32)
        v = (hi << 16) | lo
    else:
        v = tl.load(p16 + at16, mask=mask, other=0)
    return v


@triton.jit
def store_scale(p16, at16, v, mask, SDT: tl.constexpr):
    """A scale or zero point (float32 already rounded to ``SDT``) stored in the scale dtype."""
    store_item(p16, at16, float_to_bits(v, SDT, False), mask, SDT == 2)


@triton.jit
def load_scale(p16, at16, mask, SDT: tl.constexpr):
    return bits_to_float(load_item(p16, at16, mask, SDT == 2), SDT)


@triton.jit
def minmax_params(lo, hi, QMAX: tl.constexpr, SDT: tl.constexpr):
    """(zero point, scale, 1/scale) as ``quantize(symmetric=False)``: zero = min rounded to the scale
    dtype, scale = (max - zero) / QMAX rounded, 1/scale (0 for a zero scale)."""
    z = round_to(lo, SDT)
    s = round_to(tl.math.div_rn(hi - z, QMAX), SDT)
    inv = tl.where(s > 0, tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), s), 0.0)
    return z, s, inv


@triton.jit
def absmax_params(amax, QMAX: tl.constexpr, SDT: tl.constexpr):
    """(scale, 1/scale) as ``quantize(symmetric=True)``: scale = max|x| / QMAX rounded."""
    s = round_to(tl.math.div_rn(amax, QMAX), SDT)
    inv = tl.where(s > 0, tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), s), 0.0)
    return s, inv


@triton.jit
def round_int(y, NATIVE: tl.constexpr):
    """Round to the nearest integer, ties to even, as int32 (|y| < 2**22): one ``cvt.rni`` on a GPU
    (``NATIVE``), the 1.5 * 2**23 trick in the interpreter (which has no libdevice)."""
    if NATIVE:
        q = libdevice.float2int_rn(y)
    else:
        q = rint(y).to(tl.int32)
    return q


@triton.jit
def minmax_codes(x, z, inv, QMAX: tl.constexpr, NATIVE: tl.constexpr):
    """round((x - zero) * (1/scale)) clamped to 0..QMAX, as int32 (clamping before rounding gives the
    same integers: the bounds are integers)."""
    return round_int(tl.minimum(tl.maximum((x - z) * inv, 0.0), QMAX), NATIVE)


@triton.jit
def absmax_codes(x, inv, QMAX: tl.constexpr, NATIVE: tl.constexpr):
    """round(x * (1/scale)) clamped to -QMAX..QMAX, as the two's-complement byte (int32 0..255)."""
    return round_int(tl.minimum(tl.maximum(x * inv, -QMAX), QMAX), NATIVE) & 0xFF


@triton.jit
def _max_keep_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def nanmax(x, axis: tl.constexpr, NATIVE: tl.constexpr):
    """A maximum along ``axis`` that is not finite wherever the slice holds a NaN (``tl.max`` may skip
    NaNs), so a NaN input leaves a non-finite scale, which the host's check refuses. On a GPU: one
    NaN-keeping ``max.NaN`` per element; in the interpreter (whose generic reductions run element by
    element in Python) NaN becomes +Inf before a plain max."""
    if NATIVE:
        m = tl.reduce(x, axis, _max_keep_nan)
    else:
        m = tl.max(tl.where(x != x, float("inf"), x), axis=axis)
    return m


@triton.jit
def pack_words(c, BITS: tl.constexpr, E: tl.constexpr):
    """Codes ``[R, W, E]`` (int32, each < 2**BITS) -> words ``[R, W]``: code e at bits BITS*e
    (bitpack.py's little-endian order; disjoint bits, so the sum is an OR)."""
    e = tl.arange(0, E)
    return tl.sum(c << (e * BITS)[None, None, :], axis=2)


@triton.jit
def unpack_words(word, BITS: tl.constexpr, E: tl.constexpr):
    """Inverse of ``pack_words``: words ``[R, W]`` -> codes ``[R, W, E]`` (int32, unsigned)."""
    e = tl.arange(0, E)
    return (word[:, :, None] >> (e * BITS)[None, None, :]) & ((1 << BITS) - 1)


@triton.jit
def store_words(u8, p32, base, row_at, word, row_ok, row_bytes, W: tl.constexpr, WORDS: tl.constexpr):
    """Store code words ``[R, W]``: row r's first byte at ``base + row_at[r]`` (byte offsets; ``base``
    a scalar), ``row_bytes`` bytes of it exist. ``WORDS``: base and row_at are 4-aligned, one
    store per word; else four byte stores per word."""
    w = tl.arange(0, W)
    if WORDS:
        tl.store(p32 + base // 4 + ((row_at // 4)[:, None] + w[None, :]), word,
                 mask=row_ok[:, None] & (w[None, :] * 4 < row_bytes))
    else:
        j = tl.arange(0, 4)
        at = w[None, :, None] * 4 + j[None, None, :]
        byte = (word[:, :, None] >> (j * 8)[None, None, :]) & 0xFF
        tl.store(u8 + base + (row_at[:, None, None] + at), byte.to(tl.uint8),
                 mask=row_ok[:, None, None] & (at < row_bytes))


@triton.jit
def load_words(u8, p32, base, row_at, row_ok, row_bytes, W: tl.constexpr, WORDS: tl.constexpr):
    """Inverse of ``store_words``: code words ``[R, W]`` (0 where masked)."""
    w = tl.arange(0, W)
    if WORDS:
        word = tl.load(p32 + base // 4 + ((row_at // 4)[:, None] + w[None, :]),
                       mask=row_ok[:, None] & (w[None, :] * 4 < row_bytes), other=0)
    else:
        j = tl.arange(0, 4)
        at = w[None, :, None] * 4 + j[None, None, :]
        byte = tl.load(u8 + base + (row_at[:, None, None] + at), mask=row_ok[:, None, None] & (at < row_bytes),
                       other=0).to(tl.int32)
        word = tl.sum(byte << (j * 8)[None, None, :], axis=2)
    return word


@triton.jit
def quantize_rows(x, ok, col, p16, scale_at16, zero_at16, row_ok, SYM: tl.constexpr, QMAX: tl.constexpr,
                  SDT: tl.constexpr, GROUP: tl.constexpr, N_GROUPS: tl.constexpr, PADDED: tl.constexpr,
                  NATIVE: tl.constexpr):
    """Quantize tile ``x`` [R, W, E] (float32; masked lanes loaded as 0; ``ok`` marks real channels,
    ``col`` their index) per row in ``N_GROUPS`` groups of ``GROUP`` channels; store each group's
    scale (and, min-max, zero point) at int16 index ``scale_at16[r] + g * SW`` (SW: scale items in
    int16 units); return the codes [R, W, E] (int32: unsigned min-max codes, or absmax's
    two's-complement byte). ``PADDED``: the tile has lanes past head_dim, which a min must skip
    (absmax needs no mask: those lanes hold 0). Rows past the end are reduced too, never stored."""
    SW: tl.constexpr = 2 if SDT == 2 else 1
    if N_GROUPS == 1:  # one group per row (the defaults): no per-group masks
        if SYM:
            amax = nanmax(nanmax(tl.abs(x), 2, NATIVE), 1, NATIVE)
            s, inv = absmax_params(amax, QMAX, SDT)
            c = absmax_codes(x, inv[:, None, None], QMAX, NATIVE)
        else:
            if PADDED:
                lo = tl.min(tl.min(tl.where(ok, x, float("inf")), axis=2), axis=1)
                hi = nanmax(nanmax(tl.where(ok, x, float("-inf")), 2, NATIVE), 1, NATIVE)
            else:
                lo = tl.min(tl.min(x, axis=2), axis=1)
                hi = nanmax(nanmax(x, 2, NATIVE), 1, NATIVE)
            z, s, inv = minmax_params(lo, hi, QMAX, SDT)
            c = minmax_codes(x, z[:, None, None], inv[:, None, None], QMAX, NATIVE)
            store_scale(p16, zero_at16, z, row_ok, SDT)
        store_scale(p16, scale_at16, s, row_ok, SDT)
    else:  # groups along head_dim: one masked pass per group, the parameters spread back per element
        gid = col // GROUP
        z_el = tl.zeros(x.shape, tl.float32)
        inv_el = tl.zeros(x.shape, tl.float32)
        for g in tl.static_range(N_GROUPS):
            m = ok & (gid == g)
            if SYM:
                amax = nanmax(nanmax(tl.where(m, tl.abs(x), 0.0), 2, NATIVE), 1, NATIVE)
                s, inv = absmax_params(amax, QMAX, SDT)
            else:
                lo = tl.min(tl.min(tl.where(m, x, float("inf")), axis=2), axis=1)
                hi = nanmax(nanmax(tl.where(m, x, float("-inf")), 2, NATIVE), 1, NATIVE)
                z, s, inv = minmax_params(lo, hi, QMAX, SDT)
                z_el = tl.where(gid == g, z[:, None, None], z_el)
                store_scale(p16, zero_at16 + g * SW, z, row_ok, SDT)
            inv_el = tl.where(gid == g, inv[:, None, None], inv_el)
            store_scale(p16, scale_at16 + g * SW, s, row_ok, SDT)
        if SYM:
            c = absmax_codes(x, inv_el, QMAX, NATIVE)
        else:
            c = minmax_codes(x, z_el, inv_el, QMAX, NATIVE)
    return c


@triton.jit
def row_scales(p16, scale_at16, zero_at16, col, row_ok, SYM: tl.constexpr, SDT: tl.constexpr,
               GROUP: tl.constexpr, N_GROUPS: tl.constexpr):
    """Decode side of ``quantize_rows``: (scale, zero point) broadcastable to the [R, W, E] tile
    (zero point 0.0 when symmetric)."""
    SW: tl.constexpr = 2 if SDT == 2 else 1
    if N_GROUPS == 1:
        s = load_scale(p16, scale_at16, row_ok, SDT)[:, None, None]
        if SYM:
            z = tl.zeros(s.shape, tl.float32)
        else:
            z = load_scale(p16, zero_at16, row_ok, SDT)[:, None, None]
    else:  # a gather: each element reads its group's scale (cached; groups are few per row)
        g = (col // GROUP) * SW
        m = row_ok[:, None, None] & (col >= 0)
        s = load_scale(p16, scale_at16[:, None, None] + g, m, SDT)
        if SYM:
            z = tl.zeros(s.shape, tl.float32)
        else:
            z = load_scale(p16, zero_at16[:, None, None] + g, m, SDT)
    return s, z


# ---- host helpers -------------------------------------------------------------------------------

def native() -> bool:
    """Use the GPU's own conversions (``NATIVE``): compiled kernels only (see the module docstring)."""
    return not interpreted()


def needs_clamp(scale_dtype: str, dtype: torch.dtype) -> bool:
    """Whether ``dequantize``'s clamp to the output dtype's range can change a decoded value: not for
    float16 scales into bf16/fp32 (|code * scale + zero| <= 16 * 65504 is far inside their range)."""
    return not (scale_dtype == "float16" and dtype in (torch.bfloat16, torch.float32))


def pow2(n: int) -> int:
    """The smallest power of two >= n (tile sizes)."""
    return 1 << max(0, (n - 1).bit_length())


def floor_pow2(n: int) -> int:
    """The largest power of two <= n (1 for n < 1)."""
    return 1 << max(0, n.bit_length() - 1)


def device_bytes(t: torch.Tensor) -> torch.Tensor:
    """A device tensor's memory as uint8, what ``codecs.base.tensor_bytes`` gives on the host."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def as_dtype(raw: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """Device payload bytes as a ``dtype`` tensor of ``shape`` (copied when misaligned for ``dtype``)."""
    if raw.storage_offset() % torch.empty((), dtype=dtype).element_size():
        raw = raw.clone()
    return raw.view(dtype).reshape(shape)


def unpack_on_device(packed: torch.Tensor, bits: int, n_codes: int) -> torch.Tensor:
    """``bitpack.unpack`` for 2/4-bit codes with its shift table on the payload's device."""
    shifts = torch.arange(8 // bits, dtype=torch.uint8, device=packed.device) * bits
    return ((packed.unsqueeze(1) >> shifts) & ((1 << bits) - 1)).reshape(-1)[:n_codes]


def refuse_nonfinite(name: str, kv: torch.Tensor, scale_dtype: torch.dtype) -> None:
    """The CPU codec's error for a cache whose encode gave a non-finite scale or zero point: NaN/Inf
    in the cache (``KVError``), else a range the scale dtype cannot hold (``CodecError``)."""
    bad = int((~torch.isfinite(kv)).sum())
    if bad:
        raise KVError(f"codec {name!r}: {bad} NaN/Inf value(s) in the cache (the GPU encode gave a non-finite "
                      f"scale or zero point)")
    raise CodecError(f"codec {name!r}: a quantization scale or zero point overflows {scale_dtype}; "
                     f"use scale_dtype=float32")
