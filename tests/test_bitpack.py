"""Bit packing and the uniform quantization primitives."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvwire.codecs.bitpack import pack, packed_size, unpack
from kvwire.codecs.quant import dequantize, levels, quantize
from kvwire.errors import CodecError, WireError


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(0, 300), seed=st.integers(0, 2**16))
def test_pack_round_trip_and_density(bits, n, seed):
    codes = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(seed))
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == (n if bits == 8 else packed_size(n, bits))
    assert torch.equal(unpack(packed, bits, n).long(), codes)


def test_two_bit_codes_are_four_per_byte():
    codes = torch.tensor([3, 0, 1, 2])
    assert pack(codes, 2).tolist() == [3 | 0 << 2 | 1 << 4 | 2 << 6, 0]  # blocks of 8 codes


def test_pack_rejects_bad_bits_and_unpack_bad_length():
    with pytest.raises(CodecError):
        pack(torch.zeros(4), 9)
    with pytest.raises(WireError, match="packed bytes"):
        unpack(torch.zeros(3, dtype=torch.uint8), 4, 100)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_quantize_error_bound(bits, symmetric):
    x = torch.randn(4, 33, 16) * 3
    x[..., 2] *= 100
    q = quantize(x, bits, dim=-1, symmetric=symmetric, scale_dtype=torch.float32)
    assert q.codes.max() <= (2 * levels(bits, True) if symmetric else levels(bits, False))
    y = dequantize(q, bits, torch.float32, symmetric=symmetric)
    assert torch.all((x - y).abs() <= q.scale.float() / 2 + 1e-4 * x.abs() + 1e-6)


def test_constant_groups_decode_exactly():
    x = torch.full((2, 5, 8), 1.25)
    for symmetric in (False, True):
        q = quantize(x, 4, symmetric=symmetric, scale_dtype=torch.float32)
        assert torch.equal(dequantize(q, 4, torch.float32, symmetric=symmetric), x)
