"""Triton helpers for ``codecs/bitpack.py``'s layout: eight codes of ``BITS`` bits fill ``BITS`` bytes,
little-endian (code ``i`` of a block holds bits ``[BITS*i, BITS*(i+1))`` of the block's integer).

The kernels hold codes as tiles ``[rows, blocks, 8]`` (one 8-code block per inner row), so a block
is packed in registers and stored as its ``BITS`` bytes; no block ever straddles two programs.
Byte tiles are ``[rows, blocks, NB]`` with ``NB`` the next power of two >= ``BITS`` (Triton tiles
are powers of two): lanes ``m >= BITS`` are padding, masked off at the store.
Shared by the guardband and cachegen kernels; ``pack`` / ``unpack`` are the same layout in torch ops
on the device, for their eager baselines.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def byte_lanes(bits: int) -> int:
    """``NB``: byte lanes of a packed 8-code block in a tile (next power of two >= bits)."""
    return 1 << (bits - 1).bit_length()


@triton.jit
def pack_blocks(codes, BITS: tl.constexpr, NB: tl.constexpr):
    """codes [R, W, 8] int32 in [0, 2**BITS) -> the blocks' bytes [R, W, NB] int32 (lanes >= BITS zero)."""
    k = tl.arange(0, 8)
    m = tl.arange(0, NB)
    if BITS <= 4:  # 8 codes fit 32 bits; bits never overlap, so the sum is an OR (int32 wraps harmlessly)
        word = tl.sum(codes << (k * BITS)[None, None, :], axis=2)
        byte = (word[:, :, None] >> (m * 8)[None, None, :]) & 0xFF
    else:
        word = tl.sum(codes.to(tl.int64) << (k * BITS).to(tl.int64)[None, None, :], axis=2)
        byte = ((word[:, :, None] >> (m * 8).to(tl.int64)[None, None, :]) & 0xFF).to(tl.int32)
    return byte  # (one return: a static ``if`` with a return in its body would fall through in codegen)


@triton.jit
def unpack_blocks(byte, BITS: tl.constexpr):
    """bytes [R, W, NB] int32 (lanes >= BITS zero) -> codes [R, W, 8] int32."""
    k = tl.arange(0, 8)
    m = tl.arange(0, byte.shape[2])
    if BITS <= 4:
        word = tl.sum(byte << (m * 8)[None, None, :], axis=2)
        code = (word[:, :, None] >> (k * BITS)[None, None, :]) & ((1 << BITS) - 1)
    else:
        word = tl.sum(byte.to(tl.int64) << (m * 8).to(tl.int64)[None, None, :], axis=2)
        code = ((word[:, :, None] >> (k * BITS).to(tl.int64)[None, None, :]) & ((1 << BITS) - 1)).to(tl.int32)
    return code


@triton.jit
def pack_blocks_rt(codes, bits):
    """``pack_blocks`` for a run-time bit width (<= 8): bytes [R, W, 8] int32, lanes >= bits zero."""
    k = tl.arange(0, 8)
    word = tl.sum(codes.to(tl.int64) << (k * bits).to(tl.int64)[None, None, :], axis=2)
    return ((word[:, :, None] >> (k * 8).to(tl.int64)[None, None, :]) & 0xFF).to(tl.int32)


@triton.jit
def code_at(u8_ptr, at, i, bits, mask):
    """Code ``i`` (int64) of a bit-packed stream starting at byte ``at``, for any ``i`` (no block
    alignment) and a run-time bit width <= 8: the one or two bytes holding its bits."""
    bit = i * bits
    lo = tl.load(u8_ptr + at + (bit >> 3), mask=mask, other=0).to(tl.int32)
    sh = (bit & 7).to(tl.int32)
    hi = tl.load(u8_ptr + at + (bit >> 3) + 1, mask=mask & (sh + bits > 8), other=0).to(tl.int32)
    return ((lo | (hi << 8)) >> sh) & ((1 << bits) - 1)


@triton.jit
def store_f16_bytes(u8_ptr, at, value, mask):
    """Store float16 ``value`` as 2 little-endian bytes at byte offsets ``at`` (any alignment)."""
    bits = value.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    tl.store(u8_ptr + at, (bits & 0xFF).to(tl.uint8), mask=mask)
    tl.store(u8_ptr + at + 1, (bits >> 8).to(tl.uint8), mask=mask)


@triton.jit
def load_f16_bytes(u8_ptr, at, mask):
    """The float16 stored as 2 little-endian bytes at ``at`` (any alignment), as float32."""
    lo = tl.load(u8_ptr + at, mask=mask, other=0).to(tl.int32)
    hi = tl.load(u8_ptr + at + 1, mask=mask, other=0).to(tl.int32)
    return (lo | (hi << 8)).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


# ---- the same layout in torch ops on the device (the eager baselines) ----------------------------

def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``bitpack.pack`` on ``codes``' device (its shift tables live where the codes do)."""
    flat = codes.reshape(-1)
    if bits == 8:
        return flat.to(torch.uint8)
    block = torch.nn.functional.pad(flat.to(torch.int64), (0, (-flat.numel()) % 8)).view(-1, 8)
    words = (block << (torch.arange(8, dtype=torch.int64, device=flat.device) * bits)).sum(dim=1)
    shifts = torch.arange(bits, dtype=torch.int64, device=flat.device) * 8
    return ((words[:, None] >> shifts) & 0xFF).to(torch.uint8).reshape(-1)


def unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """``bitpack.unpack`` on the packed bytes' device."""
    if bits == 8:
        return packed[:n]
    words = (packed.to(torch.int64).view(-1, bits) << (torch.arange(bits, device=packed.device) * 8)).sum(dim=1)
    codes = (words[:, None] >> (torch.arange(8, device=packed.device) * bits)) & ((1 << bits) - 1)
    return codes.reshape(-1)[:n].to(torch.uint8)
