"""The GPU codec interface (kernels/base.py) and its conformance check against the CPU codecs.

Runs on CPU (the per-token kernels in Triton's interpreter), so CI checks the contract every GPU
codec is held to: payload offsets that tile the buffer, a registry that picks by parameters and says
what is missing, and a conformance check that catches a kernel writing one wrong byte.
"""

import pytest
import torch

pytest.importorskip("triton")

from kvwire.errors import CodecError, WireError  # noqa: E402
from kvwire.kernels.base import (GpuPayloads, as_layers, kernel_for, kernel_names,  # noqa: E402
                                 same_layers, supported)
from kvwire.kernels.reference import conformance, cpu_decoded, cpu_payloads  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def cache(layers=3, heads=2, seq=24, dim=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    kv = torch.randn(layers, 2, heads, seq, dim, generator=g) * torch.rand(layers, 2, heads, seq, 1, generator=g) * 4
    return kv.to(torch.bfloat16).to(DEVICE)


def test_payload_offsets_must_tile_the_buffer():
    data = torch.zeros(12, dtype=torch.uint8)
    p = GpuPayloads.equal_slots(data, 3)
    assert p.offsets == (0, 4, 8, 12) and p.n_layers == 3 and p.layer(1).numel() == 4
    ragged = GpuPayloads.from_bytes([b"ab", b"", b"cde"], "cpu")
    assert ragged.offsets == (0, 2, 2, 5) and ragged.to_bytes() == [b"ab", b"", b"cde"]
    with pytest.raises(WireError, match="do not split into 5 equal layers"):
        GpuPayloads.equal_slots(data, 5)
    with pytest.raises(WireError, match="do not tile 12 bytes"):
        GpuPayloads(data, (0, 5, 11))
    with pytest.raises(WireError, match="do not tile"):
        GpuPayloads(data, (0, 8, 4, 12))
    with pytest.raises(WireError, match="1-D uint8"):
        GpuPayloads(torch.zeros(3, dtype=torch.int32), (0, 3))


def test_registry_picks_by_parameters_and_names_what_is_missing():
    assert {"int8", "int4", "fp8_e4m3"} <= set(kernel_names())
    assert supported("int8") and not supported("prune_quant")
    with pytest.raises(CodecError, match="no GPU kernel for codec 'prune_quant'"):
        kernel_for("prune_quant")
    with pytest.raises(CodecError, match="unknown parameter"):
        kernel_for("int8", {"no_such_param": 1})
    assert not supported("fp8_e4m3", {"scale_dtype": "float32"})
    with pytest.raises(CodecError, match="no GPU kernel for codec 'fp8_e4m3' with parameters"):
        kernel_for("fp8_e4m3", {"scale_dtype": "float32"})


@pytest.mark.parametrize("name", ["int8", "int4", "fp8_e4m3"])
def test_conformance_passes_the_real_kernels(name):
    kv = cache(seed=len(name))
    kernel = kernel_for(name)
    full = conformance(kernel, kv)
    assert full.ok and full.identical and full.layers == (0, 1, 2)
    part = conformance(kernel, kv, layers=[2, 0])
    assert part.ok and part.layers == (0, 2)
    # the helpers the kernels' tests use agree with the kernel's own decode
    data = cpu_payloads(kernel.codec, kv)
    assert kernel.encode(kv).to_bytes() == data
    assert same_layers(as_layers(kernel.decode(GpuPayloads.from_bytes(data, DEVICE), tuple(kv.shape), kv.dtype)),
                       cpu_decoded(kernel.codec, data, tuple(kv.shape), kv.dtype))


def test_conformance_catches_one_wrong_byte_and_a_wrong_decode():
    kv = cache(seed=7)
    kernel = kernel_for("int8")
    good = kernel.encode(kv)
    bad_data = good.data.clone()
    bad_data[good.offsets[1] + 100] ^= 1  # one code of layer 1
    bad = GpuPayloads(bad_data, good.offsets)
    c = conformance(kernel, kv, payloads=bad)
    assert not c.identical and not c.ok
    assert conformance(kernel, kv, layers=[0, 2], payloads=bad).ok  # the damage is in layer 1 only

    class OffByOneDecode(type(kernel)):
        def decode(self, payloads, shape, dtype, *, out=None, check=True):
            x = super().decode(payloads, shape, dtype, out=out, check=check)
            x[-1, 1, 0, 0, 0] += 1
            return x

    wrong = OffByOneDecode("int8")
    c = conformance(wrong, kv)
    assert c.identical and not c.decode_identical and not c.ok
    assert conformance(wrong, kv, layers=[0]).ok  # the wrong element is in the last layer


@pytest.mark.parametrize("name, params", [("k8v4", {}), ("kivi4", {}), ("int8", {"granularity": "channel"})])
def test_fixed_rate_decoders_refuse_payloads_split_into_other_layers(name, params):
    """The same bytes cut at other layer boundaries are a WireError naming both splits, not a wrong cache."""
    kv = torch.randn(2, 2, 1, 8, 64).to(torch.bfloat16)
    k = kernel_for(name, params)
    p = k.encode(kv)
    with pytest.raises(WireError, match=rf"{p.nbytes} payload bytes in 2 layers, expected 2 layers of {p.nbytes // 2}"):
        k.decode(GpuPayloads(p.data, (0, 1, p.nbytes)), tuple(kv.shape), kv.dtype)
