"""The cachegen Triton kernels against the CPU codec: the device symbols + the CPU entropy stage give
the CPU codec's payload bytes (``rans``), the device alone gives them for ``entropy="none"``; the
decode is bit-identical either way.

Without a GPU the kernels run in Triton's CPU interpreter (conftest sets TRITON_INTERPRET=1); the
``gpu`` tests run the compiled kernels at realistic shapes.
"""

import pytest
import torch

pytest.importorskip("triton")
pytest.importorskip("constriction")

from kvwire.errors import CodecError, KVError, WireError  # noqa: E402
from kvwire.kernels.cachegen import kernel as cg  # noqa: E402  (registers the kernel)
from kvwire.kernels.base import GpuPayloads, kernel_for  # noqa: E402
from kvwire.kernels.reference import conformance, cpu_payloads  # noqa: E402

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
FIELDS = ("anchor_codes", "anchor_scale", "anchor_zero", "delta_codes", "delta_scale")


def random_cache(layers=2, heads=3, seq=37, dim=64, dtype=torch.bfloat16, seed=0, device=DEVICE):
    """Rows of very different magnitudes (attention-sink-like), a few outlier key channels, a zero row."""
    g = torch.Generator().manual_seed(seed)
    kv = torch.randn(layers, 2, heads, seq, dim, generator=g) * torch.rand(layers, 2, heads, seq, 1, generator=g).pow(3) * 8
    kv[:, 0, :, :, :2] *= 20
    kv[0, 1, 0, 0] = 0.0
    return kv.to(dtype).to(device)


def check(params, kv):
    kernel = cg.CacheGenKernel("cachegen", params)
    result = conformance(kernel, kv)
    assert result.identical, f"{params} {list(kv.shape)}: payload differs from the CPU codec's"
    assert result.decode_identical, f"{params} {list(kv.shape)}: decode differs from the CPU codec's"
    return kernel


# (params, shape [layers, heads, seq, head_dim], dtype): odd sequences (a partial last chunk, deltas that
# straddle 8-code blocks: packed after the fact), multiples of 128 tokens (packed in place), 1 token (no
# deltas), chunk_size 1 and 10 (not a power of two), 2..8 bits, head_dim 12/32/64/96/128
CASES = [
    ({}, (3, 2, 37, 64), torch.bfloat16),
    ({}, (3, 2, 144, 96), torch.float16),
    ({"entropy": "none"}, (3, 2, 37, 64), torch.bfloat16),
    ({"entropy": "none"}, (4, 2, 128, 64), torch.bfloat16),
    ({"entropy": "none", "bits_early": 3, "bits_mid": 7, "bits_late": 2}, (3, 3, 256, 96), torch.float16),
    ({"entropy": "none", "chunk_size": 10, "anchor_bits": 6, "bits_mid": 8}, (3, 1, 53, 32), torch.float32),
    ({"chunk_size": 4, "bits_early": 8}, (3, 1, 100, 128), torch.bfloat16),
    ({"chunk_size": 1}, (3, 1, 20, 64), torch.bfloat16),
    ({"entropy": "none"}, (3, 2, 1, 64), torch.bfloat16),
    ({"entropy": "none", "anchor_bits": 5}, (3, 1, 45, 12), torch.bfloat16),  # head_dim not a multiple of 8
]


@pytest.mark.parametrize("params,shape,dtype", CASES)
def test_kernel_writes_the_cpu_codecs_bytes(params, shape, dtype):
    check(params, random_cache(*shape, dtype=dtype, seed=shape[2]))


def test_device_symbols_and_host_stage_are_separate_parts():
    kernel = cg.CacheGenKernel("cachegen", {})
    assert kernel.host_stage == cg.CacheGenKernel.host_stage == "rANS entropy coding on the CPU (constriction)"
    assert cg.CacheGenKernel("cachegen", {"entropy": "none"}).host_stage is None
    kv = random_cache(3, 2, 80, 64, seed=5)
    sym = kernel.encode_symbols(kv)
    assert sym.delta_codes.device == kv.device and sym.delta_codes.shape == (3, 2, 2, 64, 80 - 5)
    assert b"".join(kernel.host_encode(sym)) == b"".join(cpu_payloads(kernel.codec, kv))
    decoded = kernel.decode_symbols(sym, kv.dtype)
    again = kernel.decode_symbols(kernel.host_decode(GpuPayloads.from_bytes(kernel.host_encode(sym), kv.device),
                                                     tuple(kv.shape)), kv.dtype)
    assert torch.equal(decoded, again)
    # rans and none code the same symbols: the same decode
    none = cg.CacheGenKernel("cachegen", {"entropy": "none"})
    assert torch.equal(none.decode(none.encode(kv), tuple(kv.shape), kv.dtype), decoded)


def test_eager_baseline_gives_the_same_symbols_and_bytes():
    for params, shape in (({}, (3, 2, 37, 64)), ({"entropy": "none"}, (3, 1, 128, 96))):
        kernel = cg.CacheGenKernel("cachegen", params)
        kv = random_cache(*shape, seed=9)
        sym, eager = kernel.encode_symbols(kv), kernel.encode_symbols_eager(kv)
        assert all(torch.equal(getattr(sym, f), getattr(eager, f)) for f in FIELDS)
        payloads = kernel.encode_eager(kv)
        assert payloads.to_bytes() == kernel.encode(kv).to_bytes() == cpu_payloads(kernel.codec, kv)
        assert torch.equal(kernel.decode_eager(payloads, tuple(kv.shape), kv.dtype),
                           kernel.decode(payloads, tuple(kv.shape), kv.dtype))


def test_gpu_launch_sizes_in_the_interpreter(monkeypatch):
    """The compiled path's tile sizes (not the interpreter's large ones) give the same bytes."""
    monkeypatch.setattr(cg, "interpreted", lambda: False)
    monkeypatch.setitem(cg.TUNING, "l2_group_bytes", 2 * 300 * 64 * 2)  # delta passes by 2 tensor-heads
    assert cg.CacheGenKernel("cachegen")._groups(6, 300 * 64 * 2) == [(0, 2), (2, 4), (4, 6)]
    check({}, random_cache(3, 1, 300, 64, seed=2))
    check({"entropy": "none"}, random_cache(3, 1, 256, 64, seed=2))
    check({"entropy": "none"}, random_cache(3, 1, 77, 64, seed=2))


def test_bad_input_is_refused_with_a_clear_error():
    kv = random_cache(3, 2, 37, 64, seed=1)
    for params in ({}, {"entropy": "none"}):
        kernel = cg.CacheGenKernel("cachegen", params)
        bad = kv.clone()
        bad[1, 0, 1, 5, 7] = float("inf")
        with pytest.raises(KVError, match="NaN/Inf"):
            kernel.encode(bad)
        with pytest.raises(CodecError, match="overflows float16"):
            kernel.encode(random_cache(3, 2, 37, 64, dtype=torch.float32) * 1e6)
    with pytest.raises(CodecError, match="float16"):
        kernel_for("cachegen", {"scale_dtype": "float32"})
    none = cg.CacheGenKernel("cachegen", {"entropy": "none"})
    payloads = none.encode(kv)
    shape = tuple(kv.shape)
    out_of_range = payloads.data.clone()
    at = int(cg.packed_layout(tuple(sorted(none.params.items())), shape).sections[0, 4]) + 1
    out_of_range[at:at + 12] = 0xFF  # delta codes 2**bits - 1 > 2 * qmax
    with pytest.raises(WireError, match="out of range"):
        none.decode(GpuPayloads(out_of_range, payloads.offsets), shape, kv.dtype)
    rans = cg.CacheGenKernel("cachegen", {})
    coded = rans.encode(kv)
    damaged = coded.data.clone()
    damaged[84 + 2 * (2 * 64 * 2)] = 7  # layer 0: its K anchor stream's mode byte, after 2 scale sections
    with pytest.raises(WireError, match="unknown symbol stream mode"):
        rans.decode(GpuPayloads(damaged, coded.offsets), shape, kv.dtype)
    with pytest.raises(WireError, match="sections"):
        rans.decode(GpuPayloads(coded.data[4:], tuple(max(0, o - 4) for o in coded.offsets)), shape, kv.dtype)


def test_registered_and_found_by_name():
    assert isinstance(kernel_for("cachegen"), cg.CacheGenKernel)
    assert isinstance(kernel_for("cachegen", {"entropy": "none"}), cg.CacheGenKernel)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA device")
@pytest.mark.parametrize("entropy", ["rans", "none"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compiled_kernels_on_the_gpu(entropy, dtype):
    for layers, heads, seq, dim in ((4, 8, 4096, 128), (4, 3, 1000, 64), (3, 1, 777, 256)):
        kv = random_cache(layers, heads, seq, dim, dtype=dtype, seed=seq)
        kernel = check({"entropy": entropy}, kv)
        fast = kernel.encode(kv, check=False)
        assert fast.to_bytes() == kernel.encode(kv).to_bytes()
        assert torch.equal(kernel.decode(fast, tuple(kv.shape), dtype, check=False),
                           kernel.decode(fast, tuple(kv.shape), dtype))
