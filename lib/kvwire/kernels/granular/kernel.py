"""GPU kernels for what ``TokenQuantKernel`` leaves out of ``int8`` / ``int4`` -- ``granularity:
group`` and ``channel`` with any ``symmetric`` / ``scale_dtype``, and token granularity with
non-default parameters -- and ``fp8_e5m2`` (per token, fp16 scales: its defaults).

Every payload is the CPU codec's ``encode_layer`` bytes, byte for byte, and every decode the CPU
``decode_layer``'s tensor, bit for bit: ``codecs/quant.py``'s arithmetic redone in float32 with
correctly rounded divisions, no FMA contraction and RNE on bit patterns (``jit.py``).

- ``GroupQuantKernel``: one scale per run of ``G`` consecutive elements (``group_size``, or
  ``head_dim`` at token granularity). A tensor is then rows of ``G`` with its scales in row order:
  **one launch** per cache, each element read once (``group_encode_kernel``), as the per-token
  kernels. int4 needs an even ``G`` (two codes of a byte never straddle two groups).
- ``ChannelQuantKernel``: one scale per (head, channel) over the sequence. **Three launches**:
  per-chunk channel ranges (reads the cache), their combination into scales (reads ``1 / chunk``
  of that in float32), the codes (reads the cache again, back to front, so its start can hit what
  the L2 kept of the first pass's end). The cache is read twice: counting one read, as the bench
  does, the DRAM roofline is 3 / 5 = **0.60** of copy bandwidth for int8 from bf16/fp16 (2 + 2 + 1
  bytes moved per element, 3 counted), 2.5 / 4.5 = **0.56** for int4. Decode reads once (0.8 is
  reachable). int4 needs an even ``head_dim``.
- ``Fp8E5M2Kernel``: the row kernel with ``G = head_dim`` and E5M2 rounding on bit patterns.

The kernels also write the section tables and ``bitpack``'s zero padding of a packed codes section,
so an encode is its launches and nothing else on the device. ``check=True`` costs one sync: a
non-finite scale is a NaN/Inf input (``KVError``) or a range past the scale dtype (``CodecError``,
as on the CPU). On decode it refuses what the CPU decode refuses (a section table that does not
match, non-finite scales, symmetric codes outside the balanced range, NaN/Inf FP8 codes) with a
``WireError``, in a few syncs. ``check=False`` (the timed path) syncs never.

Launch knobs to sweep on a GPU: ``TILE`` (elements per program), ``NUM_WARPS``, ``CHUNK`` and
``TARGET_PROGRAMS`` (tokens per channel-reduction program); ``encode``/``decode`` take ``tile``,
``num_warps`` and ``chunk`` to override them per call.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import torch

from ...codecs import build
from ...codecs.quant import SCALE_DTYPES
from ...errors import CodecError, KVError, WireError
from ..base import GpuPayloads, KernelCodec, Stats, check_cache, register_kernel
from ..launch import header_tensor, interpreted, triton_cdiv
from ..layout import TokenLayout
from . import eager
from .layout import Scheme

# GPU launch defaults by kernel: the per-token kernels' best (bench/NOTES.md, version 2: small
# programs, 1 warp to encode, 2 to decode); the channel reduction loops over a chunk with 4 warps
TILE = {"group_encode": 1024, "group_decode": 1024, "channel_reduce": 2048, "channel_encode": 1024,
        "channel_decode": 1024}
NUM_WARPS = {"group_encode": 1, "group_decode": 2, "channel_reduce": 4, "channel_scale": 4, "channel_encode": 1,
             "channel_decode": 2, "channel_fused": 8}
# caches of at most FUSED_MAX_TOKENS tokens take channel_fused_kernel (one launch, one read of the cache:
# a program holds every token of a block of channels, at most FUSED_ELEMENTS elements); longer ones the
# three launches below
CHANNEL_FUSED = True
FLAT_DECODE = True  # channel and group decodes on flat rows where the layout allows (whole-word rows, a power of 2)
FUSED_MAX_TOKENS = 4096
FUSED_ELEMENTS = 32768
CHUNK = 512  # at most this many tokens per channel-reduction program on a GPU, ...
TARGET_PROGRAMS = 4096  # ... fewer where that would leave fewer programs than this (~2 waves on an H200)
BLOCK_CHUNKS = 16  # chunk ranges combined per step of channel_scale_kernel
CHUNK_INTERPRETED = 64
BLOCK_INTERPRETED = 256  # rows per program in the interpreter, whose cost is per program
OUT_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}  # jit.py's OUT


# ---- launch arguments -----------------------------------------------------------------------------

@functools.lru_cache(maxsize=256)
def _layout_args(sch: Scheme, shape: tuple[int, ...], align: int) -> tuple[TokenLayout, dict, dict]:
    """(layout, the arguments and flags every launch shares, the header / pad arguments) of a
    cache shape whose payload buffer allows views of ``align`` bytes (cached: no host work per call)."""
    from .jit import KINDS, SDTS

    _, _, h, s, d = shape
    lay = sch.layout(shape)
    off = lay.offsets()
    scales = [off["k_scales"], off["v_scales"]] + ([] if sch.symmetric else [off["k_zeros"], off["v_zeros"]])
    row_bytes = sch.group // sch.per_byte
    nb = sch.itemsize
    common = dict(
        LAYER_BYTES=lay.layer_bytes, CODES_OFF=off["k_codes"], CODES_STRIDE=off["v_codes"] - off["k_codes"],
        SCALES_OFF=off["k_scales"], SCALES_STRIDE=off["v_scales"] - off["k_scales"], ZEROS_OFF=off.get("k_zeros", 0),
        KIND=KINDS[sch.kind], SYM=sch.symmetric, QMAX=sch.qmax, SDT=SDTS[sch.scale_dtype], NB=nb,
        # native scale stores / whole-word code stores where every layer's sections allow them
        SALIGN=align >= nb and _aligned(nb, lay.layer_bytes, *scales),
        WORDS=align >= 4 and row_bytes % 4 == 0 and _aligned(4, lay.layer_bytes, off["k_codes"], off["v_codes"]))
    written = h * s * d // sch.per_byte  # codes bytes before bitpack's zero padding
    fixed = dict(PAD_AT=written, PAD_N=lay.codes - written, HEADER=len(lay.header))
    return lay, common, fixed


def _aligned(n: int, *offsets: int) -> bool:
    return all(o % n == 0 for o in offsets)


def _views(buf: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], int]:
    """(uint8, int16, int32 views of ``buf``), and the widest of 1/2/4 bytes those views are valid
    for; an invalid view is ``buf`` itself, never dereferenced since the alignment flags say so."""
    align = 4
    while align > 1 and (buf.numel() % align or buf.data_ptr() % align):
        align //= 2
    return (buf, buf.view(torch.int16) if align >= 2 else buf, buf.view(torch.int32) if align >= 4 else buf), align


def _fp_args(kernel: str, num_warps: int | None) -> dict:
    # interpreter runs ignore compile options; on a GPU, no multiply-add fusion (see token/jit.py)
    if interpreted():
        return {}
    return {"enable_fp_fusion": False, "num_warps": num_warps or NUM_WARPS[kernel]}


def _padded(n: int, at_least: int) -> int:
    return max(at_least, 1 << (n - 1).bit_length())


def _block(kernel: str, tile: int | None, padded_row: int) -> int:
    return BLOCK_INTERPRETED if interpreted() else max(1, (tile or TILE[kernel]) // padded_row)


def _chunk(seq: int, slabs: int, block_s: int) -> int:
    """Tokens per channel-reduction program: ``CHUNK``, or a power of two down to one tile where
    ``CHUNK`` would leave fewer than ``TARGET_PROGRAMS`` programs (4 layers x 8 heads x 4k tokens: 64)."""
    if interpreted():
        return CHUNK_INTERPRETED
    fill = max(1, seq * slabs // TARGET_PROGRAMS)
    return max(block_s, min(CHUNK, 1 << (fill.bit_length() - 1)))


def _out_view(out: torch.Tensor) -> torch.Tensor:
    return out.view(torch.int16) if out.dtype == torch.bfloat16 else out  # bf16 stored as its bit patterns


# ---- launches -------------------------------------------------------------------------------------

def _rows_encode(kv, out, sch: Scheme, tile, num_warps, chunk) -> None:
    from .jit import group_encode_kernel

    ptrs, align = _views(out)
    lay, a, fixed = _layout_args(sch, tuple(kv.shape), align)
    gp = _padded(sch.group, 4 * sch.per_byte)
    block = _block("group_encode", tile, gp)
    group_encode_kernel[(triton_cdiv(lay.rows, block), kv.shape[0] * 2)](
        kv, *ptrs, header_tensor(lay.header, str(kv.device)), lay.rows, **a, **fixed, G=sch.group, GP=gp,
        BLOCK_R=block, **_fp_args("group_encode", num_warps))


def _rows_decode(data, out, sch: Scheme, tile, num_warps) -> None:
    from .jit import group_decode_flat_kernel, group_decode_kernel

    ptrs, align = _views(data)
    lay, a, _ = _layout_args(sch, tuple(out.shape), align)
    gp = _padded(sch.group, 4 * sch.per_byte)
    block = _block("group_decode", tile, gp)
    if FLAT_DECODE and a["WORDS"] and gp == sch.group:  # flat rows: 16-byte stores (bench/NOTES.md, issue 30)
        flat = {k: v for k, v in a.items() if k != "WORDS"}
        group_decode_flat_kernel[(triton_cdiv(lay.rows, block), out.shape[0] * 2)](
            *ptrs, _out_view(out), lay.rows, **flat, LIMIT=torch.finfo(out.dtype).max, G=sch.group, BLOCK_R=block,
            OUT=OUT_CODES[out.dtype], **_fp_args("group_decode", num_warps))
        return
    group_decode_kernel[(triton_cdiv(lay.rows, block), out.shape[0] * 2)](
        *ptrs, _out_view(out), lay.rows, **a, LIMIT=torch.finfo(out.dtype).max, G=sch.group, GP=gp,
        BLOCK_R=block, OUT=OUT_CODES[out.dtype], **_fp_args("group_decode", num_warps))


def _fused_channels(seq: int, head_dim: int, per_byte: int) -> int | None:
    """Channels per program of ``channel_fused_kernel`` for this cache, or None where it does not apply
    (``CHANNEL_FUSED`` off, a sequence longer than ``FUSED_MAX_TOKENS``, or no power-of-two block of at
    least ``4 * per_byte`` channels that divides head_dim and fits ``FUSED_ELEMENTS`` with the tokens)."""
    if not CHANNEL_FUSED or seq > FUSED_MAX_TOKENS:
        return None
    sp = _padded(seq, 1)
    cb = min(_padded(head_dim, 1), max(1, FUSED_ELEMENTS // sp))
    while cb >= 4 * per_byte and head_dim % cb:
        cb //= 2
    return cb if cb >= 4 * per_byte else None


def _channel_encode(kv, out, sch: Scheme, tile, num_warps, chunk) -> None:
    from .jit import channel_encode_kernel, channel_fused_kernel, channel_reduce_kernel, channel_scale_kernel

    n, _, h, s, d = kv.shape
    cb = _fused_channels(s, d, sch.per_byte)
    if cb is not None and chunk is None:  # one launch, one read: every token of a channel block in registers
        ptrs, align = _views(out)
        lay, a, fixed = _layout_args(sch, tuple(kv.shape), align)
        words = a["WORDS"] and (cb // sch.per_byte) % 4 == 0
        args = {k: v for k, v in a.items() if k != "WORDS"}
        channel_fused_kernel[(d // cb, n * 2 * h)](kv, *ptrs, header_tensor(lay.header, str(kv.device)), s, h,
                                                   **args, **fixed, D=d, SP=_padded(s, 1), CB=cb, WORDS=words,
                                                   **_fp_args("channel_fused", num_warps))
        return
    slabs = n * 2 * h  # (layer, K/V, head): the [seq, head_dim] matrices whose channels get a scale
    dp = _padded(d, 4 * sch.per_byte)
    nv = 1 if sch.symmetric else 2  # max |x|, or max and min
    ptrs, align = _views(out)
    lay, a, fixed = _layout_args(sch, tuple(kv.shape), align)
    block_s = _block("channel_reduce", tile, dp)
    chunk = chunk or _chunk(s, slabs, block_s)
    n_chunks = triton_cdiv(s, chunk)
    part = torch.empty(slabs * n_chunks * nv * d, dtype=torch.float32, device=kv.device)
    aux = torch.empty(slabs * nv * d, dtype=torch.float32, device=kv.device)
    channel_reduce_kernel[(n_chunks, slabs)](kv, part, s, chunk, n_chunks, D=d, DP=dp,
                                             BLOCK_S=min(block_s, _padded(chunk, 1)), SYM=sch.symmetric,
                                             **_fp_args("channel_reduce", num_warps))
    scale_args = {k: v for k, v in a.items() if k not in ("KIND", "WORDS")}
    channel_scale_kernel[(slabs,)](part, aux, *ptrs, header_tensor(lay.header, str(kv.device)), n_chunks, h,
                                   **scale_args, **fixed, D=d, DP=dp, BLOCK_C=BLOCK_CHUNKS,
                                   **_fp_args("channel_scale", None))
    block = _block("channel_encode", tile, dp)
    channel_encode_kernel[(triton_cdiv(s, block), slabs)](
        kv, aux, ptrs[0], ptrs[2], s, h, a["LAYER_BYTES"], a["CODES_OFF"], a["CODES_STRIDE"], D=d, DP=dp,
        BLOCK_S=block, KIND=a["KIND"], SYM=a["SYM"], QMAX=a["QMAX"], WORDS=a["WORDS"],
        **_fp_args("channel_encode", num_warps))


def _channel_decode(data, out, sch: Scheme, tile, num_warps) -> None:
    from .jit import channel_decode_flat_kernel, channel_decode_kernel

    n, _, h, s, d = out.shape
    dp = _padded(d, 4 * sch.per_byte)
    ptrs, align = _views(data)
    _, a, _ = _layout_args(sch, tuple(out.shape), align)
    block = _block("channel_decode", tile, dp)
    if FLAT_DECODE and a["WORDS"] and dp == d:  # flat [D] rows: 16-byte stores (bench/NOTES.md, issue 30)
        flat = {k: v for k, v in a.items() if k != "WORDS"}
        channel_decode_flat_kernel[(triton_cdiv(s, block), n * 2 * h)](
            *ptrs, _out_view(out), s, h, **flat, LIMIT=torch.finfo(out.dtype).max, D=d, BLOCK_S=block,
            OUT=OUT_CODES[out.dtype], **_fp_args("channel_decode", num_warps))
        return
    channel_decode_kernel[(triton_cdiv(s, block), n * 2 * h)](
        *ptrs, _out_view(out), s, h, **a, LIMIT=torch.finfo(out.dtype).max, D=d, DP=dp, BLOCK_S=block,
        OUT=OUT_CODES[out.dtype], **_fp_args("channel_decode", num_warps))


# ---- the kernel classes ---------------------------------------------------------------------------

class _UniformKernel(KernelCodec):
    """Shared body: scheme, encode / decode around the launches, checks, the eager baseline."""

    _encode_launch: Callable
    _decode_launch: Callable

    def __init__(self, name: str, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(name, params)
        self._schemes: dict[int, Scheme] = {}

    def full_params(self) -> dict[str, Any]:
        return _full_params(self.name, self.params)

    def scheme(self, head_dim: int) -> Scheme:
        """The scheme on caches of ``head_dim`` (a ``CodecError`` where the setting cannot apply)."""
        if head_dim not in self._schemes:
            self._schemes[head_dim] = self._make_scheme(head_dim)
        return self._schemes[head_dim]

    def _make_scheme(self, head_dim: int) -> Scheme:
        p = self.full_params()
        g = p["group_size"] if p["granularity"] == "group" else head_dim
        if p["granularity"] == "group" and head_dim % g:
            raise CodecError(f"codec {self.name!r}: head_dim {head_dim} is not a multiple of group_size {g}; "
                             f"set group_size to a divisor of {head_dim} or use granularity='token'")
        if self.name == "int4" and g % 2:
            what = "group_size" if p["granularity"] == "group" else "head_dim"
            raise CodecError(f"the GPU int4 kernel packs two codes of one {p['granularity']} per byte: it needs an "
                             f"even {what}, got {g}")
        return Scheme(self.name, p["granularity"] == "channel", g, bool(p["symmetric"]), p["scale_dtype"])

    # ---- encode ---------------------------------------------------------------------------------

    def encode(self, kv: torch.Tensor, stats: Stats = None, *, check: bool = True, tile: int | None = None,
               num_warps: int | None = None, chunk: int | None = None) -> GpuPayloads:
        """``tile``, ``num_warps`` (and ``chunk`` for channels): launch knobs (module doc)."""
        n, h, s, d = check_cache(kv, f"GPU {self.name} kernels")
        sch = self.scheme(d)
        lay = sch.layout(tuple(kv.shape))
        kv = kv.contiguous()
        out = torch.empty(n * lay.layer_bytes, dtype=torch.uint8, device=kv.device)
        if not kv.numel():  # no element, no program: only the section tables
            out.view(n, lay.layer_bytes)[:, :len(lay.header)] = header_tensor(lay.header, str(kv.device))
            return GpuPayloads.equal_slots(out, n)
        self._encode_launch(kv, out, sch, tile, num_warps, chunk)
        if check:
            self._check_encoded(kv, out, sch, lay)
        return GpuPayloads.equal_slots(out, n)

    def _check_encoded(self, kv: torch.Tensor, out: torch.Tensor, sch: Scheme, lay: TokenLayout) -> None:
        n = kv.shape[0]
        parts = [_section(out, lay, n, f"{t}_{what}", SCALE_DTYPES[sch.scale_dtype])
                 for t in ("k", "v") for what in (("scales",) if sch.symmetric else ("scales", "zeros"))]
        if bool(torch.isfinite(torch.cat(parts, dim=1)).all()):
            return
        bad = ~torch.isfinite(kv)
        if bool(bad.any()):
            per = bad.flatten(2).sum(dim=2).cpu()  # [layers, K/V]
            layer, t = (int(v) for v in per.nonzero()[0])
            raise KVError(f"codec {self.name!r}: {int(per.sum())} NaN/Inf value(s) in the cache, first in layer "
                          f"{layer} {('keys', 'values')[t]}")
        what = "a per-token scale" if sch.kind == "fp8_e5m2" else "a quantization scale or zero point"
        raise CodecError(f"codec {self.name!r}: {what} overflows {sch.scale_dtype}; use scale_dtype=float32")

    # ---- decode ---------------------------------------------------------------------------------

    def decode(self, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype, *, check: bool = True,
               tile: int | None = None, num_warps: int | None = None) -> torch.Tensor:
        shape = tuple(int(x) for x in shape)
        if len(shape) != 5 or shape[1] != 2:
            raise KVError(f"a cache for the GPU codecs is [layers, 2, kv_heads, seq, head_dim], got {list(shape)}")
        if dtype not in OUT_CODES:
            raise KVError(f"the GPU {self.name} decode writes fp16, bf16 or fp32, not {dtype}")
        n = shape[0]
        sch = self.scheme(shape[-1])
        lay = sch.layout(shape)
        data = payloads.data
        payloads.require_equal_slots(n, lay.layer_bytes, self.name, shape)
        if check:
            self._check_payload(data, sch, lay, n)
        out = torch.empty(shape, dtype=dtype, device=data.device)
        if out.numel():
            self._decode_launch(data, out, sch, tile, num_warps)
        return out

    def _check_payload(self, data: torch.Tensor, sch: Scheme, lay: TokenLayout, n: int) -> None:
        """What the CPU decode (``UniformQuantCodec._check_decoded``, ``Fp8Codec.decode_layer``) refuses."""
        per_layer = data.view(n, lay.layer_bytes)
        if not bool((per_layer[:, :len(lay.header)] == header_tensor(lay.header, str(data.device))).all()):
            raise WireError(f"codec {self.name!r}: a payload's section table does not match its shape")
        sdt = SCALE_DTYPES[sch.scale_dtype]
        for what, label in (("scales", "scale"), ("zeros", "zero point"))[:1 if sch.symmetric else 2]:
            vals = torch.cat([_section(data, lay, n, f"{t}_{what}", sdt) for t in ("k", "v")], dim=1)
            if not bool(torch.isfinite(vals).all()):
                raise WireError(f"codec {self.name!r}: payload holds a non-finite {label}")
            if sch.kind == "fp8_e5m2" and not bool((vals > 0).all()):
                raise WireError(f"codec {self.name!r}: payload holds a non-positive or non-finite scale")
        if not sch.symmetric:
            return
        off = lay.offsets()
        for t in ("k", "v"):
            codes = per_layer[:, off[f"{t}_codes"]:off[f"{t}_codes"] + lay.codes]
            if sch.kind == "fp8_e5m2":
                bad, problem = (codes & 0x7C) == 0x7C, "a NaN/Inf fp8 code"
            elif sch.kind == "int8":
                bad, problem = codes == 0x80, "a symmetric code outside the balanced range"
            else:  # int4: code 15 (bitpack's zero padding is code 0)
                bad = ((codes & 0xF) == 0xF) | ((codes >> 4) == 0xF)
                problem = "a symmetric code outside the balanced range"
            if bool(bad.any()):
                raise WireError(f"codec {self.name!r}: payload holds {problem}")

    # ---- eager baseline: the CPU codec's torch ops, run on the device tensors --------------------

    def encode_eager(self, kv: torch.Tensor, stats: Stats = None) -> GpuPayloads:
        return eager.encode_eager(self, kv, stats)

    def _eager_sections(self, t: torch.Tensor, sch: Scheme) -> list[torch.Tensor]:
        return eager.quant_sections(self, t, sch)

    def decode_eager(self, payloads: GpuPayloads, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return eager.decode_eager(self, payloads, shape, dtype)

    def _eager_decode(self, sec, lay: TokenLayout, sch: Scheme, shape3, dtype) -> torch.Tensor:
        return eager.quant_decode(self, sec, lay, sch, shape3, dtype)


def _section(buf: torch.Tensor, lay: TokenLayout, n: int, name: str, dtype: torch.dtype) -> torch.Tensor:
    """Scale or zero section ``name`` (``k_scales``, ...) of every layer as [layers, values] of ``dtype``."""
    at = lay.offsets()[name]
    return buf.view(n, lay.layer_bytes)[:, at:at + lay.scale_bytes].contiguous().view(dtype)


def _full_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Canonical params with every default filled in (int8's canonical params omit its defaults)."""
    return {**{k: p.default for k, p in build(name).tensor.PARAMS.items()}, **dict(params)}


@register_kernel
class GroupQuantKernel(_UniformKernel):
    """int8 / int4 with one scale per ``group_size`` head_dim elements of a token (``granularity:
    group``), or per token with non-default ``symmetric`` / ``scale_dtype``: one launch."""

    names = ("int8", "int4")
    _encode_launch = staticmethod(_rows_encode)
    _decode_launch = staticmethod(_rows_decode)

    @classmethod
    def supports(cls, name: str, params: Mapping[str, Any]) -> bool:
        p = _full_params(name, params)
        if p["granularity"] == "group":
            return name != "int4" or p["group_size"] % 2 == 0
        # token granularity at the codec's defaults is TokenQuantKernel's (tuned; any order of registration)
        return p["granularity"] == "token" and dict(params) != build(name).params

    @classmethod
    def limits(cls) -> str:
        return ("it implements granularity 'group' (int4: an even group_size) and 'token' with non-default "
                "symmetric / scale_dtype")


@register_kernel
class ChannelQuantKernel(_UniformKernel):
    """int8 / int4 with one scale per (head, channel) over the sequence (``granularity: channel``):
    per-chunk ranges, their combination, then the codes (three launches, the cache read twice)."""

    names = ("int8", "int4")
    _encode_launch = staticmethod(_channel_encode)
    _decode_launch = staticmethod(_channel_decode)

    @classmethod
    def supports(cls, name: str, params: Mapping[str, Any]) -> bool:
        return _full_params(name, params)["granularity"] == "channel"

    @classmethod
    def limits(cls) -> str:
        return "it implements granularity 'channel' (int4: an even head_dim), any symmetric / scale_dtype"


@register_kernel
class Fp8E5M2Kernel(_UniformKernel):
    """FP8 E5M2 per token, fp16 scales rounded up (``fp8_e5m2``'s defaults): the row kernel with
    ``G = head_dim``, one launch."""

    names = ("fp8_e5m2",)
    _encode_launch = staticmethod(_rows_encode)
    _decode_launch = staticmethod(_rows_decode)

    def _make_scheme(self, head_dim: int) -> Scheme:
        return Scheme("fp8_e5m2", False, head_dim, True, "float16")

    def _eager_sections(self, t: torch.Tensor, sch: Scheme) -> list[torch.Tensor]:
        return eager.fp8_sections(self, t, sch)

    def _eager_decode(self, sec, lay: TokenLayout, sch: Scheme, shape3, dtype) -> torch.Tensor:
        return eager.fp8_decode(self, sec, lay, sch, shape3, dtype)
