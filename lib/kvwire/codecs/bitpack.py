"""Bit packing: unsigned codes of 1..8 bits, densely packed into bytes (vectorised, no loops).

Eight codes of ``bits`` bits fill exactly ``bits`` bytes, so codes are processed in blocks of 8
(the tail is zero-padded; ``unpack`` is told how many codes to return). Little-endian within a
block: code i occupies bits ``[bits*i, bits*(i+1))`` of the block's integer. 2-bit codes are 4 per
byte, 4-bit codes 2 per byte, 3-bit codes 8 per 3 bytes -- never one code per byte.
"""

from __future__ import annotations

import torch

from ..errors import CodecError, WireError


def packed_size(n_codes: int, bits: int) -> int:
    """Bytes that ``n_codes`` codes of ``bits`` bits occupy."""
    return ((n_codes + 7) // 8) * bits


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Flatten ``codes`` (integers in [0, 2**bits)) and pack them into a uint8 tensor."""
    if not 1 <= bits <= 8:
        raise CodecError(f"bit packing supports 1..8 bits, not {bits}")
    flat = codes.reshape(-1)
    if bits == 8:
        return flat.to(torch.uint8)
    n = flat.numel()
    pad = (-n) % 8
    if 8 % bits == 0:  # 1, 2, 4 bits: whole codes per byte, cheap uint8 shifts
        per = 8 // bits
        block = torch.nn.functional.pad(flat.to(torch.uint8), (0, pad)).view(-1, per)
        out = block[:, 0].clone()
        for i in range(1, per):  # loop over the <= 8 code slots of a byte, not over elements
            out |= block[:, i] << (bits * i)
        return out
    block = torch.nn.functional.pad(flat.to(torch.int64), (0, pad)).view(-1, 8)
    shifts = torch.arange(8, dtype=torch.int64, device=block.device) * bits
    words = (block << shifts).sum(dim=1)  # up to 64 bits per block of 8 codes
    byte_shifts = torch.arange(bits, dtype=torch.int64, device=block.device) * 8
    return ((words.unsqueeze(1) >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)


def unpack(packed: torch.Tensor, bits: int, n_codes: int) -> torch.Tensor:
    """Inverse of :func:`pack`: the first ``n_codes`` codes as uint8."""
    if not 1 <= bits <= 8:
        raise CodecError(f"bit packing supports 1..8 bits, not {bits}")
    expected = packed_size(n_codes, bits) if bits < 8 else n_codes
    if packed.numel() != expected:
        raise WireError(f"{packed.numel()} packed bytes for {n_codes} codes of {bits} bits (expected {expected})")
    if bits == 8:
        return packed.to(torch.uint8).reshape(-1)
    if 8 % bits == 0:
        per = 8 // bits
        shifts = torch.arange(per, dtype=torch.uint8, device=packed.device) * bits  # on the codes' device (eager GPU baselines)
        codes = (packed.to(torch.uint8).unsqueeze(1) >> shifts) & ((1 << bits) - 1)
        return codes.reshape(-1)[:n_codes]
    groups = packed.to(torch.int64).view(-1, bits)
    byte_shifts = torch.arange(bits, dtype=torch.int64, device=packed.device) * 8
    words = (groups << byte_shifts).sum(dim=1)
    shifts = torch.arange(8, dtype=torch.int64, device=packed.device) * bits
    codes = (words.unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1)[:n_codes].to(torch.uint8)
