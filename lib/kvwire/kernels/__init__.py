"""Triton implementations of codecs, behind the codecs' own names and parameters (a device switch,
not a fork): ``encode_cache`` turns a whole cache into the concatenated per-layer payloads the CPU
codec writes, byte for byte; ``decode_cache`` turns them back.

A cache here is one contiguous tensor ``[layers, 2, kv_heads, seq, head_dim]`` (K then V per
layer), on a CUDA device -- or on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``, set
before ``triton`` is imported), which is how CI checks the kernels' logic without a GPU.

Kernels exist for: ``int8`` (per token, symmetric, fp16 scales: its defaults), ``int4`` (per token,
min-max, fp16 scales and zeros: its defaults) and ``fp8_e4m3`` (per token, fp16 scales: its
defaults). ``supports(name, params)`` says whether a setting has one; other settings raise a
``CodecError`` naming what is missing.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Mapping

import torch

from ..codecs import build
from ..errors import CodecError, KVError, WireError
from .layout import TokenLayout

_DEFAULTS = {"int8": "int8", "int4": "int4", "fp8_e4m3": "fp8_e4m3"}
# elements per program on a GPU (BLOCK_R = tile // padded head_dim rows) and warps per program:
# the best of bench/gpu_codecs.py --sweep on an H200 (bench/NOTES.md): small programs, many in flight
TILE = {"encode": 1024, "decode": 1024}
NUM_WARPS = {"encode": 1, "decode": 2}
# int4 decode unpacks two codes per byte and writes twice what it reads: 4 warps, 0.52 of copy against
# 0.28-0.31 with 1-2 (the version-2 sweep in bench/NOTES.md)
NUM_WARPS_BY_CODEC = {("decode", "int4"): 4}
BLOCK_R_INTERPRETED = 256  # the interpreter's cost is per program: fewer, larger ones


def interpreted() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def supports(name: str, params: Mapping[str, Any] | None = None) -> bool:
    """Whether ``name`` with ``params`` (the codec's canonical params) has a GPU kernel."""
    if name not in _DEFAULTS:
        return False
    return build(name, params).params == build(name).params  # only the defaults, for now


def _layout(name: str, shape: tuple[int, ...]) -> TokenLayout:
    if len(shape) != 5 or shape[1] != 2:
        raise KVError(f"a cache for the GPU codecs is [layers, 2, kv_heads, seq, head_dim], got {list(shape)}")
    _, _, h, s, d = shape
    bits = {"int8": 8, "int4": 4, "fp8_e4m3": 8}[name]
    if bits == 4 and d % 8:
        raise CodecError(f"the int4 kernel needs head_dim divisible by 8, got {d}")
    return TokenLayout(heads=h, seq=s, head_dim=d, bits=bits, scale_itemsize=2, zero_point=name == "int4")


def _check(name: str, params: Mapping[str, Any] | None) -> None:
    if name not in _DEFAULTS:
        raise CodecError(f"no GPU kernel for codec {name!r}; kernels exist for {', '.join(_DEFAULTS)}")
    if not supports(name, params):
        raise CodecError(f"the GPU kernel for {name!r} implements its default parameters "
                         f"{build(name).params}, not {dict(params or {})}")


def _args(name: str, lay: TokenLayout, tile: int) -> dict:
    off = lay.offsets()
    d = lay.head_dim
    row_bytes = lay.codes // lay.rows if lay.rows else 0
    # whole-word code stores when every row's codes start 4-aligned (``WORDS`` in token_quant.encode_kernel)
    words = all(v % 4 == 0 for v in (lay.layer_bytes, off["k_codes"], off["v_codes"], row_bytes)) and row_bytes >= 4
    dp = max(8, 1 << (d - 1).bit_length())
    return dict(LAYER_BYTES=lay.layer_bytes, CODES_OFF=off["k_codes"], CODES_STRIDE=off["v_codes"] - off["k_codes"],
                SCALES_OFF=off["k_scales"], SCALES_STRIDE=off["v_scales"] - off["k_scales"],
                ZEROS_OFF=off.get("k_zeros", 0), D=d, DP=dp, BLOCK_R=_block_rows(dp, tile), KIND=_kind(name),
                WORDS=words and (d % 4 == 0 if lay.bits == 8 else d % 8 == 0) and dp == d)


def _block_rows(dp: int, tile: int) -> int:
    return BLOCK_R_INTERPRETED if interpreted() else max(1, tile // dp)


def _kind(name: str) -> int:
    from .token_quant import KINDS

    return KINDS[name]


def _fp_args(op: str, num_warps: int | None = None, name: str | None = None) -> dict:
    # interpreter runs ignore compile options; on a GPU, no multiply-add fusion (see token_quant.py)
    if interpreted():
        return {}
    return {"enable_fp_fusion": False,
            "num_warps": num_warps or NUM_WARPS_BY_CODEC.get((op, name)) or NUM_WARPS[op]}


def payload_buffer(name: str, shape: tuple[int, ...], device) -> torch.Tensor:
    """An uninitialised payload buffer for ``encode_cache(..., out=)`` (reused across calls)."""
    lay = _layout(name, tuple(shape))
    return torch.empty(shape[0] * lay.layer_bytes, dtype=torch.uint8, device=device)


def encode_cache(name: str, kv: torch.Tensor, params: Mapping[str, Any] | None = None, *,
                 out: torch.Tensor | None = None, check: bool = True, tile: int | None = None,
                 num_warps: int | None = None) -> torch.Tensor:
    """Encode ``kv`` [layers, 2, heads, seq, head_dim] (fp16/bf16/fp32) with codec ``name``: a uint8
    tensor of ``layers`` payloads back to back, each equal to the CPU codec's ``encode_layer`` bytes.

    ``check``: refuse NaN/Inf input (a non-finite scale, read back from the payload: one sync).
    ``tile`` (elements per program) and ``num_warps``: launch tuning (``bench/gpu_codecs.py --sweep``).
    """
    from .token_quant import encode_kernel

    _check(name, params)
    if kv.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise KVError(f"GPU codecs take fp16, bf16 or fp32 caches, not {kv.dtype}")
    lay = _layout(name, tuple(kv.shape))
    kv = kv.contiguous()
    n_layers = kv.shape[0]
    if out is None:
        out = payload_buffer(name, tuple(kv.shape), kv.device)
    if out.numel() != n_layers * lay.layer_bytes or out.dtype != torch.uint8:
        raise CodecError(f"payload buffer holds {out.numel()} {out.dtype}, need {n_layers * lay.layer_bytes} uint8")
    header = header_tensor(lay.header, str(kv.device))
    out.view(n_layers, lay.layer_bytes)[:, :len(lay.header)] = header
    n_rows = n_layers * 2 * lay.rows
    if n_rows:
        a = _args(name, lay, tile or TILE["encode"])
        encode_kernel[(triton_cdiv(lay.rows, a["BLOCK_R"]), n_layers * 2)](
            kv, out, _words_view(out), out.view(torch.float16), n_rows, lay.rows, **a, **_fp_args("encode", num_warps, name))
    if check and n_rows:
        scales = _sections(out, lay, n_layers, "scales")
        if not bool(torch.isfinite(scales).all()):
            raise KVError(f"codec {name!r}: a non-finite scale came out of the GPU encode: NaN/Inf in the cache, "
                          f"or a range past float16's")
    return out


def decode_cache(name: str, payload: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype,
                 params: Mapping[str, Any] | None = None, *, out: torch.Tensor | None = None, check: bool = True,
                 tile: int | None = None, num_warps: int | None = None) -> torch.Tensor:
    """Decode ``encode_cache``'s payloads (or the CPU codec's, concatenated) to a cache of ``shape``.
    ``check``: compare every layer's section table with the shape's (one sync)."""
    from .token_quant import decode_kernel

    _check(name, params)
    if dtype not in (torch.float16, torch.bfloat16):
        raise KVError(f"the GPU decode writes fp16 or bf16, not {dtype}")
    lay = _layout(name, tuple(shape))
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
        decode_kernel[(triton_cdiv(lay.rows, a["BLOCK_R"]), n_layers * 2)](
            payload, _words_view(payload), payload.view(torch.float16), target, n_rows, lay.rows, **a,
            OUT_BF16=dtype == torch.bfloat16, LIMIT=torch.finfo(dtype).max, **_fp_args("decode", num_warps, name))
    return out


def _sections(buf: torch.Tensor, lay: TokenLayout, n_layers: int, what: str) -> torch.Tensor:
    """The float16 ``what`` sections (scales or zeros) of every layer, K and V."""
    off = lay.offsets()
    per_layer = buf.view(n_layers, lay.layer_bytes)
    parts = [per_layer[:, off[f"{t}_{what}"]:off[f"{t}_{what}"] + lay.scale_bytes] for t in ("k", "v")]
    return torch.cat(parts, dim=1).contiguous().view(torch.float16)


@functools.lru_cache(maxsize=64)
def header_tensor(header: bytes, device: str) -> torch.Tensor:
    """A layout's section table on ``device``, copied there once (not on every call)."""
    return torch.frombuffer(bytearray(header), dtype=torch.uint8).to(device)


def _words_view(buf: torch.Tensor) -> torch.Tensor:
    # int32 view for whole-word code access; unused (any pointer will do) when the layout is not 4-aligned
    return buf.view(torch.int32) if buf.numel() % 4 == 0 and buf.data_ptr() % 4 == 0 else buf


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
