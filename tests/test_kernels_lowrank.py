"""Low-rank kernels (svd_runtime, svd_runtime_int4) against the CPU codecs: the encode's payload
within the reconstruction tolerance of the CPU's (identical where the device SVD is LAPACK's, as
in the interpreter), the Triton decode of the CPU payload within 1 ulp of the CPU decode.
"""

import pytest
import torch

pytest.importorskip("triton")

from kvwire.codecs import LayerKV  # noqa: E402
from kvwire.codecs.svd import effective_rank  # noqa: E402
from kvwire.errors import KVError, WireError  # noqa: E402
from kvwire.kernels.lowrank import kernel as lowrank  # noqa: E402  (registers the kernels)
from kvwire.kernels.base import GpuPayloads, kernel_for, layer_contexts  # noqa: E402
from kvwire.kernels.reference import conformance, cpu_decoded, cpu_payloads  # noqa: E402

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"


def random_cache(layers=2, heads=3, seq=37, dim=64, dtype=torch.bfloat16, seed=0, device=DEVICE):
    """Rows of very different magnitudes (attention-sink-like), a few outlier channels, a zero row."""
    g = torch.Generator().manual_seed(seed)
    kv = torch.randn(layers, 2, heads, seq, dim, generator=g) * torch.rand(layers, 2, heads, seq, 1, generator=g).pow(3) * 8
    kv[:, 0, :, :, :2] *= 20  # outlier key channels
    kv[0, 1, 0, 0] = 0.0
    return kv.to(dtype).to(device)


def check(kernel, kv, layers=None):
    c = conformance(kernel, kv, layers=layers)
    assert c.within_tolerance, f"{kernel.name}: payload reconstruction outside tolerance ({c})"
    assert c.decode_identical, f"{kernel.name}: Triton decode of the CPU payload outside 1 ulp"
    return c


CASES = [
    ("svd_runtime", None, 37, 64, torch.bfloat16),
    ("svd_runtime", {"factor_dtype": "bfloat16", "rank": 5}, 64, 96, torch.float16),
    ("svd_runtime", {"factor_dtype": "float32", "rank": 200}, 20, 128, torch.float32),  # rank clamped to seq
    ("svd_runtime_int4", None, 100, 128, torch.bfloat16),
    ("svd_runtime_int4", {"group_size": 10, "scale_dtype": "float32", "rank": 7}, 37, 96, torch.float16),
    ("svd_runtime_int4", {"group_size": 16, "scale_dtype": "bfloat16"}, 9, 64, torch.float32),
]


@pytest.mark.parametrize("name,params,seq,dim,dtype", CASES)
def test_lowrank_kernels_against_the_cpu_codec(name, params, seq, dim, dtype):
    c = check(kernel_for(name, params), random_cache(seq=seq, dim=dim, dtype=dtype, seed=seq + dim))
    if not GPU:  # the interpreter's "device" SVD is LAPACK's: the glue writes the CPU's bytes exactly
        assert c.identical


@pytest.mark.parametrize("method", ["gram", "subspace"])
@pytest.mark.parametrize("name,params,seq,dim,dtype", CASES)
def test_the_gram_factorizations_reconstruct_as_well_as_the_svd(name, params, seq, dim, dtype, method, monkeypatch):
    """FACTORIZE = "gram" (eigendecomposition of the small Gram matrix, X^T X or X X^T by shape) and
    "subspace" (subspace iteration on it): the payload differs from the CPU's, its reconstruction error
    does not (the codec's own tolerance)."""
    monkeypatch.setattr(lowrank, "FACTORIZE", method)
    kernel = kernel_for(name, params)
    kv = random_cache(seq=seq, dim=dim, dtype=dtype, seed=seq + dim)
    c = check(kernel, kv)
    assert kernel.encode(kv).nbytes == sum(len(p) for p in cpu_payloads(kernel.codec, kv))


def test_the_gram_factorization_can_fail_the_tolerance(monkeypatch):
    """The tolerance catches a Gram factorization that keeps the wrong eigenvectors (smallest first)."""
    gram = lowrank._factorize_gram

    def wrong_end(x, rank):
        return gram(x.flip(-1), rank)  # the factors of the matrix with its columns reversed

    monkeypatch.setattr(lowrank, "FACTORIZE", "gram")
    monkeypatch.setattr(lowrank, "_factorize_gram", wrong_end)
    c = conformance(kernel_for("svd_runtime"), random_cache(seq=64, dim=64, seed=3))
    assert not c.within_tolerance


def _other_svd(x, rank):
    """Another valid truncated SVD (float64 LAPACK, a random sign per singular pair): what a GPU
    solver may return instead of the CPU's factors."""
    xf = x.double()
    m = xf.abs().amax(dim=(1, 2))
    m = torch.where(m > 0, m, torch.ones_like(m))
    u, s, vh = torch.linalg.svd(xf / m[:, None, None], full_matrices=False)
    sign = torch.where(torch.rand(s.shape, generator=torch.Generator().manual_seed(0)) < 0.5, -1.0, 1.0)
    u, vh = u * sign.to(u)[:, None, :], vh * sign.to(u)[:, :, None]
    r = effective_rank(rank, x.shape[1], x.shape[2])
    s1 = torch.where(s[:, 0] > 0, s[:, 0], torch.ones_like(s[:, 0]))
    a = (u[:, :, :r] * (s[:, None, :r] / s1[:, None, None])).clamp(-1, 1).float().contiguous()
    b = vh[:, :r, :].clamp(-1, 1).float().contiguous()
    return torch.stack((m.float(), s1.float()), dim=1), a, b


@pytest.mark.parametrize("name", ["svd_runtime", "svd_runtime_int4"])
def test_compare_accepts_another_valid_svd_and_rejects_a_damaged_one(name, monkeypatch):
    kernel = kernel_for(name)
    kv = random_cache(seq=80, dim=64, seed=3, device="cpu")
    want = kernel.encode(kv).to_bytes()
    monkeypatch.setattr(lowrank, "factorize", _other_svd)
    got = kernel.encode(kv).to_bytes()
    ctxs = layer_contexts(tuple(kv.shape), kv.dtype)
    for i in range(2):
        layer = LayerKV(kv[i, 0], kv[i, 1])
        assert got[i] != want[i]
        for args in ((), (layer,)):
            differing, elements, steps = kernel.compare(got[i], want[i], ctxs[i], *args)
            assert differing == 0 and steps <= 1 and elements == 2 * 3 * 80 * 64
        lay = kernel.layout(kv.shape)
        bad = bytearray(got[i])
        b_at = len(lay.header) + lay.b_off  # K's first B row (singular vector) of head 0, negated
        for j in range(64 if name == "svd_runtime" else 32):
            if name == "svd_runtime":
                bad[b_at + 2 * j + 1] ^= 0x80  # fp16 sign bits
            else:
                b = bad[b_at + j]  # code c = q + 7 -> 14 - c = -q + 7, both nibbles
                bad[b_at + j] = (14 - (b & 15)) | ((14 - (b >> 4)) << 4)
        differing, _, steps = kernel.compare(bytes(bad), want[i], ctxs[i])
        assert differing > 0 and steps > 1


def test_same_decode_tolerance_can_fail():
    kernel = kernel_for("svd_runtime")
    kv = random_cache(seq=64, dim=64, dtype=torch.bfloat16, seed=6)
    shape = tuple(kv.shape)
    host = cpu_payloads(kernel.codec, kv)
    want = cpu_decoded(kernel.codec, host, shape, kv.dtype)
    got = kernel.decode(GpuPayloads.from_bytes(host, kv.device), shape, kv.dtype)
    layers = [LayerKV(x[0], x[1]) for x in got]
    assert kernel.same_decode(layers, want)
    up = [LayerKV(torch.nextafter(x.k, torch.full_like(x.k, float("inf"))), x.v) for x in layers]
    assert not kernel.same_decode(up, want)  # 1 ulp everywhere: a rounding bug, not reduction order
    assert not kernel.same_decode([LayerKV(x.k * 1.01, x.v) for x in layers], want)


@pytest.mark.parametrize("name", ["svd_runtime", "svd_runtime_int4"])
def test_eager_baseline_writes_the_same_bytes(name):
    kernel = kernel_for(name)
    kv = random_cache(seq=30, seed=5)
    fused, eager = kernel.encode(kv), kernel.encode_eager(kv)
    assert torch.equal(fused.data, eager.data)
    dec, dec_eager = kernel.decode(fused, tuple(kv.shape), kv.dtype), kernel.decode_eager(fused, tuple(kv.shape), kv.dtype)
    assert kernel.same_decode([LayerKV(x[0], x[1]) for x in dec], [LayerKV(x[0], x[1]) for x in dec_eager])


def test_bad_input_is_refused_with_a_clear_error():
    kv = random_cache(seq=20, seed=2)
    bad = kv.clone()
    bad[1, 0, 2, 3, 5] = float("inf")
    with pytest.raises(KVError, match="NaN/Inf value.*layer 1 keys"):
        kernel_for("svd_runtime").encode(bad)
    shape = tuple(kv.shape)
    for name in ("svd_runtime", "svd_runtime_int4"):
        kernel = kernel_for(name)
        good = kernel.encode(kv)
        lay = kernel.layout(shape)
        hdr = len(lay.header)

        def damaged(at, value, good=good, lay=lay):
            data = good.data.clone()
            data[lay.layer_bytes + at] = value
            return GpuPayloads(data, good.offsets)

        with pytest.raises(WireError, match="section table"):
            kernel.decode(damaged(9, 7), shape, kv.dtype)
        with pytest.raises(WireError, match="corrupted per-head scales"):
            kernel.decode(damaged(hdr + 3, 0xBF), shape, kv.dtype)  # head 0's absmax turned negative
        with pytest.raises(WireError, match="payload bytes"):
            kernel.decode(GpuPayloads.equal_slots(good.data[:-2], 2), shape, kv.dtype)
    int4 = kernel_for("svd_runtime_int4")
    good = int4.encode(kv)
    lay = int4.layout(shape)
    data = good.data.clone()
    data[len(lay.header) + lay.a_off] = 0xFF  # two codes of 15 (the CPU's "code out of range")
    with pytest.raises(WireError, match="int4 code out of range"):
        int4.decode(GpuPayloads(data, good.offsets), shape, kv.dtype)
    svd = kernel_for("svd_runtime", {"factor_dtype": "float32"})
    good = svd.encode(kv)
    lay = svd.layout(shape)
    data = good.data.clone()
    data[len(lay.header) + lay.a_off:len(lay.header) + lay.a_off + 4] = torch.tensor([0, 0, 0xC0, 0x7F])  # NaN
    with pytest.raises(WireError, match="NaN/Inf"):
        svd.decode(GpuPayloads(data, good.offsets), shape, kv.dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["svd_runtime", "svd_runtime_int4"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compiled_lowrank_kernels_on_the_gpu(name, dtype):
    kernel = kernel_for(name)
    kv = random_cache(layers=4, heads=8, seq=4096, dim=128, dtype=dtype, seed=11, device="cuda")
    check(kernel, kv, layers=[0, 3])
    payload = kernel.encode(kv, check=False)
    ctxs = layer_contexts(tuple(kv.shape), kv.dtype)
    host, want = payload.to_bytes(), cpu_payloads(kernel.codec, kv[:1])
    layer = LayerKV(kv[0, 0].cpu(), kv[0, 1].cpu())
    _, _, steps = kernel.compare(host[0], want[0], ctxs[0], layer)  # error within 1 % of the CPU's
    assert steps <= 1
