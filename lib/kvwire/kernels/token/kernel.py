"""The per-token int8 / int4 / FP8 E4M3 kernels (``jit.py``) behind the ``KernelCodec`` interface,
and the functions they launch, which the offload replay, p2p and the bench scripts call directly.

``encode_cache`` turns a whole cache ``[layers, 2, kv_heads, seq, head_dim]`` (K then V per layer,
on a CUDA device or under ``TRITON_INTERPRET=1``) into the concatenated per-layer payloads the CPU
codec writes, byte for byte; ``decode_cache`` turns them back. Kernels exist for ``int8`` (per token,
symmetric, fp16 scales: its defaults), ``int4`` (per token, min-max, fp16 scales and zeros: its
defaults) and ``fp8_e4m3`` (per token, fp16 scales: its defaults). ``supports(name, params)`` says
whether a setting has one; other settings raise a ``CodecError`` naming what is missing. Every
layer's payload has the same length, fixed by the shape (``layer_bytes``).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ...errors import CodecError, KVError, WireError
from ..base import GpuPayloads, KernelCodec, Stats, register_kernel
from ..launch import fp_args, header_tensor, interpreted, triton_cdiv
from ..layout import TokenLayout
from .eager import decode_cache_eager, encode_cache_eager
from .jit import KINDS, decode_flat_kernel, decode_kernel, encode_flat_kernel, encode_kernel
from .layout import check_supported, supports, token_layout  # noqa: F401  (supports: the token door)


# elements per program on a GPU (BLOCK_R = tile // padded head_dim rows) and warps per program:
# the best of bench/gpu_codecs.py --sweep on an H200 (bench/NOTES.md): small programs, many in flight
TILE = {"encode": 1024, "decode": 1024}
NUM_WARPS = {"encode": 1, "decode": 2}
# int4 decode unpacks two codes per byte and writes twice what it reads: 4 warps, 0.52 of copy against
# 0.28-0.31 with 1-2 (the version-2 sweep in bench/NOTES.md)
NUM_WARPS_BY_CODEC = {("decode", "int4"): 4}
BLOCK_R_INTERPRETED = 256  # the interpreter's cost is per program: fewer, larger ones
# row tiles per op: "words" ([words, 4 bytes(, 2 nibbles)], 8-byte accesses of the cache) or "flat" ([D]
# rows, 16-byte accesses, bytes <-> words in registers: jit.*_flat_kernel), where the layout allows the flat
# kernels (whole-word codes, D a power of 2). Measured on an H100 (bench/NOTES.md, issue 30): flat decodes
# 0.65 -> 0.94 (int8) and 0.36 -> 0.74 (int4) of copy at 23.6 MB, int4 0.69 -> 0.86 at 268 MB; flat encodes
# lose (fp8 0.78 -> 0.31 at 59 MB). A plain string applies to both ops (bench/gpu_variants.py sets one).
LAYOUT: dict[str, str] | str = {"encode": "words", "decode": "flat"}


def _args(name: str, lay: TokenLayout, tile: int) -> dict:
    off = lay.offsets()
    d = lay.head_dim
    row_bytes = lay.codes // lay.rows if lay.rows else 0
    # whole-word code stores when every row's codes start 4-aligned (``WORDS`` in token/jit.encode_kernel)
    words = all(v % 4 == 0 for v in (lay.layer_bytes, off["k_codes"], off["v_codes"], row_bytes)) and row_bytes >= 4
    dp = max(8, 1 << (d - 1).bit_length())
    return dict(LAYER_BYTES=lay.layer_bytes, CODES_OFF=off["k_codes"], CODES_STRIDE=off["v_codes"] - off["k_codes"],
                SCALES_OFF=off["k_scales"], SCALES_STRIDE=off["v_scales"] - off["k_scales"],
                ZEROS_OFF=off.get("k_zeros", 0), D=d, DP=dp, BLOCK_R=_block_rows(dp, tile), KIND=_kind(name),
                WORDS=words and (d % 4 == 0 if lay.bits == 8 else d % 8 == 0) and dp == d)


def _flat(a: dict, layout: str | None, op: str) -> bool:
    """Whether this launch takes the flat kernels (``LAYOUT`` for ``op``, or the call's ``layout``)."""
    choice = layout or (LAYOUT[op] if isinstance(LAYOUT, dict) else LAYOUT)
    return choice == "flat" and a["WORDS"]


def _flat_args(a: dict) -> dict:
    return {k: v for k, v in a.items() if k not in ("DP", "WORDS")}


def _block_rows(dp: int, tile: int) -> int:
    return BLOCK_R_INTERPRETED if interpreted() else max(1, tile // dp)


def _kind(name: str) -> int:
    return KINDS[name]


def _fp_args(op: str, num_warps: int | None = None, name: str | None = None) -> dict:
    return fp_args(num_warps or NUM_WARPS_BY_CODEC.get((op, name)) or NUM_WARPS[op])


def payload_buffer(name: str, shape: tuple[int, ...], device) -> torch.Tensor:
    """An uninitialised payload buffer for ``encode_cache(..., out=)`` (reused across calls)."""
    lay = token_layout(name, tuple(shape))
    return torch.empty(shape[0] * lay.layer_bytes, dtype=torch.uint8, device=device)


def encode_cache(name: str, kv: torch.Tensor, params: Mapping[str, Any] | None = None, *,
                 out: torch.Tensor | None = None, check: bool = True, tile: int | None = None,
                 num_warps: int | None = None, layout: str | None = None) -> torch.Tensor:
    """Encode ``kv`` [layers, 2, heads, seq, head_dim] (fp16/bf16/fp32) with codec ``name``: a uint8
    tensor of ``layers`` payloads back to back, each equal to the CPU codec's ``encode_layer`` bytes.

    ``check``: refuse NaN/Inf input (a non-finite scale, read back from the payload: one sync).
    ``tile`` (elements per program), ``num_warps`` and ``layout`` ("words" / "flat", default ``LAYOUT``):
    launch tuning (``bench/gpu_codecs.py --sweep``).
    """
    check_supported(name, params)
    if kv.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise KVError(f"GPU codecs take fp16, bf16 or fp32 caches, not {kv.dtype}")
    lay = token_layout(name, tuple(kv.shape))
    kv = kv.contiguous()
    n_layers = kv.shape[0]
    if out is None:
        out = payload_buffer(name, tuple(kv.shape), kv.device)
    if out.numel() != n_layers * lay.layer_bytes or out.dtype != torch.uint8:
        raise CodecError(f"payload buffer holds {out.numel()} {out.dtype}, need {n_layers * lay.layer_bytes} uint8")
    header = header_tensor(lay.header, str(kv.device))
    n_rows = n_layers * 2 * lay.rows
    if n_rows:  # one launch: the kernel writes each layer's section table too
        a = _args(name, lay, tile or TILE["encode"])
        hdr = dict(HEADER_LEN=len(lay.header), HP=1 << (len(lay.header) - 1).bit_length())
        grid = (triton_cdiv(lay.rows, a["BLOCK_R"]), n_layers * 2)
        if _flat(a, layout, "encode"):
            encode_flat_kernel[grid](kv, out, _words_view(out), out.view(torch.float16), header, n_rows, lay.rows,
                                     **_flat_args(a), **hdr, **_fp_args("encode", num_warps, name))
        else:
            encode_kernel[grid](kv, out, _words_view(out), out.view(torch.float16), header, n_rows, lay.rows, **a,
                                **hdr, **_fp_args("encode", num_warps, name))
    else:
        out.view(n_layers, lay.layer_bytes)[:, :len(lay.header)] = header
    if check and n_rows:
        scales = _sections(out, lay, n_layers, "scales")
        if not bool(torch.isfinite(scales).all()):
            raise KVError(f"codec {name!r}: a non-finite scale came out of the GPU encode: NaN/Inf in the cache, "
                          f"or a range past float16's")
    return out


def decode_cache(name: str, payload: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype,
                 params: Mapping[str, Any] | None = None, *, out: torch.Tensor | None = None, check: bool = True,
                 tile: int | None = None, num_warps: int | None = None, layout: str | None = None) -> torch.Tensor:
    """Decode ``encode_cache``'s payloads (or the CPU codec's, concatenated) to a cache of ``shape``.
    ``check``: compare every layer's section table with the shape's (one sync)."""
    check_supported(name, params)
    if dtype not in (torch.float16, torch.bfloat16):
        raise KVError(f"the GPU decode writes fp16 or bf16, not {dtype}")
    lay = token_layout(name, tuple(shape))
    n_layers = shape[0]
    if payload.dtype != torch.uint8 or payload.numel() != n_layers * lay.layer_bytes:
        raise WireError(f"{payload.numel()} payload bytes for {n_layers} layers of {lay.layer_bytes} ({name})")
    header = header_tensor(lay.header, str(payload.device))
    if check and not bool((payload.view(n_layers, lay.layer_bytes)[:, :len(lay.header)] == header).all()):
        raise WireError(f"codec {name!r}: a payload's section table does not match shape {list(shape)}")
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=payload.device)
    n_rows = n_layers * 2 * lay.rows
    if n_rows:
        target = out.view(torch.int16) if dtype == torch.bfloat16 else out
        a = _args(name, lay, tile or TILE["decode"])
        grid = (triton_cdiv(lay.rows, a["BLOCK_R"]), n_layers * 2)
        out_args = dict(OUT_BF16=dtype == torch.bfloat16, LIMIT=torch.finfo(dtype).max)
        if _flat(a, layout, "decode"):
            decode_flat_kernel[grid](_words_view(payload), payload.view(torch.float16), target, n_rows, lay.rows,
                                     **_flat_args(a), **out_args, **_fp_args("decode", num_warps, name))
        else:
            decode_kernel[grid](payload, _words_view(payload), payload.view(torch.float16), target, n_rows, lay.rows,
                                **a, **out_args, **_fp_args("decode", num_warps, name))
    return out


def _sections(buf: torch.Tensor, lay: TokenLayout, n_layers: int, what: str) -> torch.Tensor:
    """The float16 ``what`` sections (scales or zeros) of every layer, K and V."""
    off = lay.offsets()
    per_layer = buf.view(n_layers, lay.layer_bytes)
    parts = [per_layer[:, off[f"{t}_{what}"]:off[f"{t}_{what}"] + lay.scale_bytes] for t in ("k", "v")]
    return torch.cat(parts, dim=1).contiguous().view(torch.float16)


def _words_view(buf: torch.Tensor) -> torch.Tensor:
    # int32 view for whole-word code access; unused (any pointer will do) when the layout is not 4-aligned
    return buf.view(torch.int32) if buf.numel() % 4 == 0 and buf.data_ptr() % 4 == 0 else buf


@register_kernel
class TokenQuantKernel(KernelCodec):
    """int8 (symmetric), int4 (min-max) and FP8 E4M3, per token, fp16 scales: each codec's defaults."""

    names = ("int8", "int4", "fp8_e4m3")
    rank = 0  # the fused per-token kernels serve the defaults before granular's general ones

    def layer_bytes(self, shape: tuple[int, int, int]) -> int:
        return token_layout(self.name, (1, 2, *shape)).layer_bytes

    def encode(self, kv: torch.Tensor, stats: Stats = None, *, out: torch.Tensor | None = None,
               check: bool = True) -> GpuPayloads:
        return GpuPayloads.equal_slots(encode_cache(self.name, kv, out=out, check=check), kv.shape[0])

    def decode(self, payloads: GpuPayloads, shape, dtype, *, out: torch.Tensor | None = None,
               check: bool = True) -> torch.Tensor:
        return decode_cache(self.name, payloads.data, tuple(shape), dtype, out=out, check=check)

    def encode_eager(self, kv: torch.Tensor, stats: Stats = None) -> GpuPayloads:
        return GpuPayloads.equal_slots(encode_cache_eager(self.name, kv), kv.shape[0])

    def decode_eager(self, payloads: GpuPayloads, shape, dtype) -> torch.Tensor:
        return decode_cache_eager(self.name, payloads.data, tuple(shape), dtype)
