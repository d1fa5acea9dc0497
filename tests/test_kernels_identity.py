"""The ``identity`` GPU codec (``kvwire.kernels.identity``) against the CPU codec: the same payload
bytes and the same decode, in Triton's interpreter on CPU (no Triton launch: device copies)."""

import pytest
import torch

pytest.importorskip("triton")

from kvwire.errors import WireError  # noqa: E402
from kvwire.kernels.base import GpuPayloads, kernel_for  # noqa: E402
from kvwire.kernels.reference import conformance, cpu_decoded, cpu_payloads  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def cache(dtype, layers=3, heads=2, seq=17, dim=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(layers, 2, heads, seq, dim, generator=g) * 5).to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_identity_kernel_writes_the_cpu_codecs_bytes(dtype):
    kv = cache(dtype, seed=int(torch.finfo(dtype).bits))
    kernel = kernel_for("identity")
    payloads = kernel.encode(kv)
    assert payloads.to_bytes() == cpu_payloads(kernel.codec, kv)
    c = conformance(kernel, kv, payloads=payloads)
    assert c.identical and c.decode_identical and c.ok
    got = kernel.decode(GpuPayloads.from_bytes(cpu_payloads(kernel.codec, kv), DEVICE), tuple(kv.shape), dtype)
    want = cpu_decoded(kernel.codec, cpu_payloads(kernel.codec, kv), tuple(kv.shape), dtype)
    assert torch.equal(got.cpu(), torch.stack([torch.stack([x.k, x.v]) for x in want]))
    assert payloads.to_bytes() == kernel.encode_eager(kv).to_bytes()


def test_identity_kernel_is_lossless_and_refuses_a_damaged_table():
    kv = cache(torch.bfloat16)
    kv[0, 1, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), -0.0])
    kernel = kernel_for("identity")
    payloads = kernel.encode(kv)
    assert payloads.to_bytes() == cpu_payloads(kernel.codec, kv)  # NaN/Inf pass as the CPU codec passes them
    assert torch.equal(kernel.decode(payloads, tuple(kv.shape), kv.dtype).view(torch.int16), kv.view(torch.int16))
    damaged = payloads.data.clone()
    damaged[0] ^= 1
    with pytest.raises(WireError, match="section table"):
        kernel.decode(GpuPayloads(damaged, payloads.offsets), tuple(kv.shape), kv.dtype)
    with pytest.raises(WireError, match="bytes per layer"):
        kernel.decode(payloads, (3, 2, 2, 17, 24), torch.float32)
