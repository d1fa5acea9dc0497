"""KVQuant GPU kernels (``kernels/kvquant/kernel.py``) against the CPU codec: payload bytes, decode, errors.

Without a GPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1) on small
shapes; the ``gpu`` tests run the compiled kernels on realistic ones.
"""

import pytest
import torch

pytest.importorskip("triton")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from kvwire.codecs.base import pack_sections, unpack_sections  # noqa: E402
from kvwire.codecs.kvquant import n_outliers  # noqa: E402
from kvwire.errors import CodecError, KVError, WireError  # noqa: E402
from kvwire.kernels.kvquant import kernel as kq  # noqa: E402  (registers the kernel)
from kvwire.kernels.kvquant import jit as kvquant_jit  # noqa: E402
from kvwire.kernels.base import GpuPayloads, as_layers, kernel_for, supported  # noqa: E402
from kvwire.kernels.reference import conformance, cpu_decoded, cpu_payloads  # noqa: E402

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"


@triton.jit
def _codes_kernel(x_ptr, lv_ptr, out_ptr, NL: tl.constexpr, N: tl.constexpr):
    i = tl.arange(0, N)
    tl.store(out_ptr + i, kvquant_jit._nf_code(tl.load(x_ptr + i), lv_ptr, NL))


def random_cache(layers=2, heads=3, seq=37, dim=64, dtype=torch.bfloat16, seed=0, device=DEVICE):
    """Rows of very different magnitudes (attention-sink-like), outlier key channels, a zero row."""
    g = torch.Generator().manual_seed(seed)
    kv = torch.randn(layers, 2, heads, seq, dim, generator=g)
    kv = kv * torch.rand(layers, 2, heads, seq, 1, generator=g).pow(3) * 8
    kv[:, 0, :, :, :2] *= 20
    kv[:, 0, :, 0] *= 30  # a sink token
    kv[0, 1, 0, 0] = 0.0
    return kv.to(dtype).to(device)


def check(name, params, kv, stats=None):
    kernel = kernel_for(name, params)
    stats = stats if stats is not None else kernel.bench_stats(tuple(kv.shape))
    c = conformance(kernel, kv, stats)
    assert c.identical, f"{name} {params}: payload differs from the CPU codec's ({c})"
    assert c.decode_identical, f"{name} {params}: decode differs from the CPU codec's"
    return kernel, stats


@pytest.mark.parametrize("name,params,shape", [
    ("kvquant4", {}, dict(seq=37, dim=64)),
    ("kvquant4", {"pre_rope": True}, dict(seq=29, dim=96, dtype=torch.float16)),
    ("kvquant3", {}, dict(seq=23, dim=128, layers=3, heads=2)),
    ("kvquant3", {"pre_rope": True, "scale_dtype": "bfloat16"}, dict(seq=19, dim=64)),
    ("kvquant2", {"outlier_fraction": 0.2}, dict(seq=17, dim=64, heads=1)),
    ("kvquant2", {"pre_rope": True, "scale_dtype": "float32"}, dict(seq=21, dim=128, dtype=torch.float32)),
])
def test_kernel_writes_the_cpu_codecs_bytes(name, params, shape):
    check(name, params, random_cache(**shape, seed=shape["seq"]))


def test_means_and_variances_are_torch_cpu_sums_bit_for_bit():
    """The z-score moments in ATen's summation order: 300 tokens (two level-1 groups, one partial),
    head_dim 40 (columns 32..39 summed by row_sum's four interleaved cascades), pre-RoPE keys."""
    from kvwire import rope

    kernel = kernel_for("kvquant4", {"pre_rope": True})
    kv = random_cache(layers=1, heads=2, seq=300, dim=40, seed=4)
    stats = kernel.bench_stats(tuple(kv.shape))
    got = kernel.moments(kv, stats)
    host = kv.cpu()
    keys = rope.rotate(host[0, 0], torch.arange(300), stats[0]["rope_inv_freq"], 1.0, inverse=True)
    for x, red, name in ((keys, 1, "keys"), (host[0, 1].float(), 2, "values")):
        mean = x.mean(dim=red, keepdim=True)
        inv = 1.0 / (x - mean).square().mean(dim=red, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        assert torch.equal(got[f"{name}_mean"][0].cpu(), mean.reshape(2, -1)), name
        assert torch.equal(got[f"{name}_inv_var"][0].cpu(), inv.reshape(2, -1)), name


def test_nf_code_is_the_cpu_lookup_near_every_boundary():
    """``_nf_code`` (symmetric: positive boundaries against |x|) against the CPU's grid lookup on the
    boundaries and their float32 neighbours, +-0, +-1 and random values."""
    from kvwire.codecs.kvquant import _nf_coder, nf_codes

    for bits in (2, 3, 4):
        lv = _nf_coder(bits)[0]
        bounds = (lv[1:] + lv[:-1]) * 0.5
        near, up, down = [bounds], bounds, bounds
        for _ in range(3):  # each boundary and its three float32 neighbours either side
            up, down = torch.nextafter(up, torch.tensor(2.0)), torch.nextafter(down, torch.tensor(-2.0))
            near += [up, down]
        x = torch.cat([torch.cat(near), torch.tensor([0.0, -0.0, 1.0, -1.0]),
                       torch.rand(4096, generator=torch.Generator().manual_seed(bits)) * 2 - 1])
        x = torch.cat([x, torch.zeros(8192 - x.numel())])
        out = torch.empty(8192, dtype=torch.int32, device=DEVICE)
        _codes_kernel[(1,)](x.to(DEVICE), kq._level_table(bits, DEVICE), out, NL=2**bits, N=8192)
        assert torch.equal(out.cpu(), nf_codes(x, bits).int())


def test_columns_outside_the_cascade_and_long_channels():
    # head_dim 40: columns 32..39 are summed by ATen's interleaved row_sum, not the cascade; 300
    # tokens: two level-1 groups of 256, the second partial; a layer of one token: all scores 0
    check("kvquant4", {}, random_cache(layers=1, heads=1, seq=300, dim=40))
    check("kvquant4", {"pre_rope": True}, random_cache(layers=1, heads=2, seq=1, dim=16))


def test_the_gpus_tile_geometry(monkeypatch):
    # the interpreter's own launches are few and large; here the GPU's: 16-row value tiles, 64-row
    # key tiles, one head per moments program, eight programs per tensor in the selection rounds
    monkeypatch.setattr(kq, "interpreted", lambda: False)
    check("kvquant2", {"outlier_fraction": 0.05}, random_cache(layers=2, heads=1, seq=33, dim=40, seed=3))


def test_without_outliers():
    check("kvquant3", {"outlier_fraction": 0.0}, random_cache(seq=13))
    check("kvquant4", {"outlier_fraction": 0.0, "pre_rope": True}, random_cache(seq=11, dim=32))


def test_candidate_buffer_overflow_takes_the_cache_path(monkeypatch):
    # the k-th score's bin does not fit the candidate buffer: the radix rounds read the cache itself
    monkeypatch.setattr(kq, "MIN_BUFFER", 4)
    monkeypatch.setattr(kq, "BUFFER_FRACTION", 1 << 30)
    check("kvquant4", {"pre_rope": True}, random_cache(seq=25, dim=32))


def test_ties_at_the_kth_score_go_to_the_lowest_index_on_both_sides():
    """Duplicate tokens make equal z-scores in every key channel; where the budget splits such a
    tie, the kernel and the CPU codec both keep the lowest flat indices: identical bytes (before
    issue 27 the CPU kept torch.topk's pick, and this seed split the tie differently)."""
    g = torch.Generator().manual_seed(21)
    kv = torch.randn(1, 2, 2, 24, 8, generator=g)
    kv[:, 0, :, 0] = kv[:, 0, :, 1]  # tokens 0 and 1 of every key channel equal
    kv[:, 0, :, :, 0] = kv[:, 0, :, :, 1]  # and channels 0 and 1
    kv = kv.to(torch.bfloat16).to(DEVICE)
    kernel = kernel_for("kvquant4", {"outlier_fraction": 0.05})
    c = conformance(kernel, kv)
    assert c.identical and c.decode_identical, c
    keys = unpack_sections(kernel.encode(kv).to_bytes()[0], 12, "kvquant4")[5]
    idx = torch.frombuffer(bytearray(keys), dtype=torch.int32).tolist()
    x = kv[0, 0].float().cpu()
    dev = x - x.mean(dim=1, keepdim=True)
    score = (dev.square() / dev.square().mean(dim=1, keepdim=True)).reshape(-1)
    order = sorted(range(score.numel()), key=lambda i: (-float(score[i]), i))
    assert idx == sorted(order[:n_outliers(x.numel(), 0.05)])


def test_eager_baseline_is_the_cpu_codec_on_the_cpu():
    kernel = kernel_for("kvquant3", {"pre_rope": True})
    kv = random_cache(seq=15, dim=32, device="cpu")
    stats = kernel.bench_stats(tuple(kv.shape))
    eager = kernel.encode_eager(kv, stats)
    assert eager.to_bytes() == cpu_payloads(kernel.codec, kv, stats) == kernel.encode(kv.to(DEVICE), stats).to_bytes()
    dec = kernel.decode_eager(eager, tuple(kv.shape), kv.dtype)
    want = cpu_decoded(kernel.codec, eager.to_bytes(), tuple(kv.shape), kv.dtype, stats)
    assert all(torch.equal(a.k, b.k) and torch.equal(a.v, b.v) for a, b in zip(as_layers(dec), want))


def test_unchecked_pre_rope_decode_reuses_tables_only_for_an_unchanged_payload():
    kernel = kernel_for("kvquant4", {"pre_rope": True})
    kv = random_cache(layers=1, heads=1, seq=7, dim=16)
    stats = kernel.bench_stats(tuple(kv.shape))
    pay = kernel.encode(kv, stats)
    shape = tuple(kv.shape)
    first = kernel.decode(pay, shape, kv.dtype, check=False)
    assert torch.equal(kernel.decode(pay, shape, kv.dtype, check=False), first)
    pay.data[-4:] = torch.tensor([0.5]).view(torch.uint8).to(pay.data.device)  # attention scaling 1 -> 0.5, in place
    changed = kernel.decode(pay, shape, kv.dtype, check=False)
    assert not torch.equal(changed, first)
    assert torch.equal(changed, kernel.decode(pay, shape, kv.dtype))


def test_statistics_and_parameters():
    assert kernel_for("kvquant4", {"pre_rope": True}).needs_stats == ("rope_inv_freq", "rope_scaling")
    assert kernel_for("kvquant4").needs_stats == () and kernel_for("kvquant4").bench_stats((1, 2, 1, 4, 8)) is None
    stats = kernel_for("kvquant2", {"pre_rope": True}).bench_stats((3, 2, 1, 4, 64))
    assert len(stats) == 3 and stats[0]["rope_inv_freq"].shape == (32,) and float(stats[0]["rope_scaling"]) == 1.0
    assert supported("kvquant3", {"scale_dtype": "float32"}) and not supported("kvquant3", {"levels": "kmeans"})
    with pytest.raises(CodecError, match="levels='nf'"):
        kernel_for("kvquant4", {"levels": "kmeans"})
    for pre in (False, True):  # the layout is the CPU codec's, section for section
        kernel = kernel_for("kvquant3", {"pre_rope": pre})
        kv = random_cache(layers=1, seq=5, dim=16, device="cpu")
        stats = kernel.bench_stats(tuple(kv.shape))
        assert kernel.layout(tuple(kv.shape), kv.dtype, 8 if pre else 0).layer_bytes == \
            len(cpu_payloads(kernel.codec, kv, stats)[0])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy meets the NaN
def test_bad_input_is_refused_with_a_clear_error():
    plain = kernel_for("kvquant2")
    kv = random_cache(layers=2, heads=1, seq=5, dim=8)
    for where, label in (((1, 0, 0, 3, 5), "layer 1 keys"), ((0, 1, 0, 4, 0), "layer 0 values")):
        bad = kv.clone()
        bad[where] = float("nan") if label.endswith("keys") else float("inf")
        with pytest.raises(KVError, match=f"NaN/Inf value.*{label}"):
            plain.encode(bad)
    with pytest.raises(CodecError, match="overflows float16"):
        plain.encode(kv * 3e4)
    with pytest.raises(CodecError, match="head_dim a multiple of 8"):
        plain.encode(random_cache(seq=4, dim=12))
    kernel = kernel_for("kvquant4", {"pre_rope": True, "outlier_fraction": 0.05})
    kv = random_cache(layers=2, heads=1, seq=5, dim=16)
    stats = kernel.bench_stats(tuple(kv.shape))
    with pytest.raises(CodecError, match="rope_inv_freq"):
        kernel.encode(kv)
    with pytest.raises(KVError, match="RoPE statistics"):
        kernel.encode(kv, [{"rope_inv_freq": torch.ones(9), "rope_scaling": torch.ones(1)}] * 2)
    good = kernel.encode(kv, stats)
    shape = tuple(kv.shape)
    with pytest.raises(WireError, match="RoPE table"):
        kernel.decode(GpuPayloads.from_bytes([p[:-3] for p in good.to_bytes()], kv.device), shape, kv.dtype)
    parts = [bytes(p) for p in unpack_sections(good.to_bytes()[0], 13, "kvquant4")]

    def damaged(i, value):
        p = list(parts)
        p[i] = value
        return GpuPayloads.from_bytes([pack_sections(p), good.to_bytes()[1]], kv.device)

    with pytest.raises(WireError, match="non-finite offset or range"):
        kernel.decode(damaged(1, b"\xff" * len(parts[1])), shape, kv.dtype)
    with pytest.raises(WireError, match="outlier indices"):
        kernel.decode(damaged(11, parts[11][4:8] + parts[11][:4] + parts[11][8:]), shape, kv.dtype)
    with pytest.raises(WireError, match="non-finite RoPE table"):
        kernel.decode(damaged(12, torch.tensor([float("nan")] * 9).numpy().tobytes()), shape, kv.dtype)
    header = bytearray(good.to_bytes()[0])
    header[0] ^= 1
    with pytest.raises(WireError, match="section table"):
        kernel.decode(GpuPayloads.from_bytes([bytes(header), good.to_bytes()[1]], kv.device), shape, kv.dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA device")
@pytest.mark.parametrize("name,params", [("kvquant4", {"pre_rope": True}), ("kvquant4", {}), ("kvquant3", {}),
                                         ("kvquant2", {"pre_rope": True})])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compiled_kernels_on_the_gpu(name, params, dtype):
    """Realistic shapes: every layer's payload within issue 5's tolerance (ties apart, identical),
    the first and last layer against the CPU codec, the decode bit-exact."""
    kernel = kernel_for(name, params)
    kv = random_cache(layers=4, heads=8, seq=4096, dim=128, dtype=dtype, seed=7, device="cuda")
    stats = kernel.bench_stats(tuple(kv.shape))
    c = conformance(kernel, kv, stats, layers=[0, 3])
    assert c.within_tolerance and c.decode_identical, c
    for dim, seq in ((96, 1000), (64, 777), (256, 300)):
        kv = random_cache(layers=3, heads=4, seq=seq, dim=dim, dtype=dtype, seed=dim, device="cuda")
        c = conformance(kernel, kv, kernel.bench_stats(tuple(kv.shape)))
        assert c.within_tolerance and c.decode_identical, (dim, seq, c)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA device")
def test_gpu_overflow_path_and_unchecked_calls(monkeypatch):
    kernel = kernel_for("kvquant4", {"pre_rope": True})
    kv = random_cache(layers=2, heads=8, seq=2048, dim=128, seed=3, device="cuda")
    stats = kernel.bench_stats(tuple(kv.shape))
    fast = kernel.encode(kv, stats, check=False)
    assert torch.equal(fast.data, kernel.encode(kv, stats).data)
    monkeypatch.setattr(kq, "MIN_BUFFER", 64)
    monkeypatch.setattr(kq, "BUFFER_FRACTION", 1 << 30)
    assert torch.equal(kernel.encode(kv, stats).data, fast.data)
    assert torch.equal(kernel.decode(fast, tuple(kv.shape), kv.dtype, check=False),
                       kernel.decode(fast, tuple(kv.shape), kv.dtype))
