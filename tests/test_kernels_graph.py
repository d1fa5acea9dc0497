"""GPU codecs replayed from CUDA graphs (kernels/graph.py).

On the CPU (CI: Triton's interpreter) a graphed call is the plain call, so these check that the bound
call reads the input's memory as it is at call time and returns the codec's bytes; on a GPU the same
tests capture and replay real graphs, and a codec that waits for the host inside is refused by name.
"""

import pytest
import torch

pytest.importorskip("triton")

from kvwire.errors import CodecError, KVError  # noqa: E402
from kvwire.kernels.base import as_layers, kernel_for, same_layers  # noqa: E402
from kvwire.kernels.graph import graph_decode, graph_encode  # noqa: E402
from kvwire.kernels.reference import cpu_payloads  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def cache(layers=2, heads=2, seq=16, dim=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    kv = torch.randn(layers, 2, heads, seq, dim, generator=g) * torch.rand(layers, 2, heads, seq, 1, generator=g) * 4
    return kv.to(torch.bfloat16).to(DEVICE)


@pytest.mark.parametrize("name", ["int8", "int4", "k8v4"])
def test_a_graphed_encode_follows_the_buffer_it_is_bound_to(name):
    kernel = kernel_for(name)
    kv = cache()
    enc = graph_encode(kernel, kv)
    assert enc.captured == kv.is_cuda
    first = enc().data.clone()
    assert first.cpu().numpy().tobytes() == b"".join(cpu_payloads(kernel.codec, kv))
    kv.copy_(cache(seed=1))  # a new cache written into the same buffer: the next call encodes it
    second = enc()
    assert not torch.equal(second.data, first)
    assert second.data.cpu().numpy().tobytes() == b"".join(cpu_payloads(kernel.codec, kv))


@pytest.mark.parametrize("name", ["int8", "fp8_e4m3", "kivi2"])
def test_a_graphed_decode_equals_the_plain_decode(name):
    kernel = kernel_for(name)
    kv = cache()
    payloads = kernel.encode(kv)
    dec = graph_decode(kernel, payloads, tuple(kv.shape), kv.dtype)
    want = as_layers(kernel.decode(payloads, tuple(kv.shape), kv.dtype))
    assert same_layers(as_layers(dec()), want)
    payloads.data.copy_(kernel.encode(cache(seed=2)).data)  # new bytes in the bound payload buffer
    assert not same_layers(as_layers(dec()), want)
    assert same_layers(as_layers(dec()), as_layers(kernel.decode(payloads, tuple(kv.shape), kv.dtype)))


def test_the_checked_call_still_refuses_nan():
    kernel = kernel_for("int8")
    kv = cache()
    enc = graph_encode(kernel, kv)
    kv[0, 0, 0, 3, 5] = float("nan")
    with pytest.raises(KVError, match="non-finite scale"):
        enc.check()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_a_codec_that_waits_for_the_host_is_refused_by_name():
    kernel = kernel_for("cachegen")  # its rANS stage runs on the host
    with pytest.raises(CodecError, match="'cachegen' encode cannot be replayed from a CUDA graph"):
        graph_encode(kernel, cache())


def test_the_host_timer_counts_the_host_time_of_a_call():
    """kernels.launch.host_us (the bench's and the offload replay's issue cost): a call that holds the host
    for 2 ms costs at least that, one that does nothing far less."""
    import time

    from kvwire.kernels.launch import host_us

    assert host_us(lambda: time.sleep(0.002), calls=3, batches=3) >= 1900
    assert host_us(lambda: None, calls=100, batches=3) < 1000
