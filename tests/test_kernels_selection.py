"""Token-selection kernels (streaming_llm, h2o, snapkv, pyramidkv, keynorm) against the CPU codecs:
the same kept tokens (ties included), the same payload bytes, the same decoded layers.

Without a GPU the kernels run in Triton's CPU interpreter (conftest sets TRITON_INTERPRET=1); the
``gpu`` tests run the compiled kernels at realistic shapes.
"""

import pytest
import torch

pytest.importorskip("triton")

from kvwire.codecs.selection import edge_mask, stat  # noqa: E402
from kvwire.codecs.snapkv import snap_scores  # noqa: E402
from kvwire.errors import CodecError, KVError, WireError  # noqa: E402
from kvwire.kernels.selection import kernel as selection  # noqa: E402  (registers the kernels)
from kvwire.kernels.base import GpuPayloads, kernel_for, layer_contexts  # noqa: E402
from kvwire.kernels.reference import conformance, cpu_decoded, cpu_payloads  # noqa: E402

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
POLICIES = ["streaming_llm", "h2o", "snapkv", "pyramidkv", "keynorm"]


def random_cache(layers=3, heads=3, seq=37, dim=64, dtype=torch.bfloat16, seed=0, device=DEVICE):
    """Rows of very different magnitudes (attention-sink-like), a few outlier channels, a zero row."""
    g = torch.Generator().manual_seed(seed)
    kv = torch.randn(layers, 2, heads, seq, dim, generator=g) * torch.rand(layers, 2, heads, seq, 1, generator=g).pow(3) * 8
    kv[:, 0, :, :, :2] *= 20  # outlier key channels
    kv[0, 1, 0, 0] = 0.0
    return kv.to(dtype).to(device)


def stats_for(kernel, kv, seed=1):
    g = torch.Generator(device=kv.device).manual_seed(seed)
    return kernel.bench_stats(tuple(kv.shape), g)


def check(kernel, kv, stats=None, layers=None):
    stats = stats if stats is not None else stats_for(kernel, kv)
    c = conformance(kernel, kv, stats, layers=layers)
    assert c.identical, f"{kernel.name}: GPU payload differs from the CPU codec's"
    assert c.decode_identical, f"{kernel.name}: GPU decode differs from the CPU codec's"
    return stats


# (seq, head_dim, dtype): 37 tokens -> a 5-byte mask, rows copied byte by byte; 48 -> 2-byte words;
# 64 -> 4-byte words; 45 and 100 reach the columns ATen sums in its second (ILP) order
SHAPES = [(37, 64, torch.bfloat16), (48, 96, torch.float16), (100, 128, torch.float32)]


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("seq,dim,dtype", SHAPES)
def test_selection_kernels_write_the_cpu_codecs_bytes(name, seq, dim, dtype):
    check(kernel_for(name), random_cache(seq=seq, dim=dim, dtype=dtype, seed=seq + dim))


@pytest.mark.parametrize("name,params", [
    ("streaming_llm", {"sinks": 0, "budget": 0.25}), ("streaming_llm", {"keep": 3, "sinks": 8}),
    ("h2o", {"recent_ratio": 0.0, "keep": 11}), ("h2o", {"budget": 1.0}),
    ("snapkv", {"obs_window": 17, "kernel_size": 4, "pooling": "max"}), ("snapkv", {"kernel_size": 1, "budget": 0.8}),
    ("pyramidkv", {"budget": 0.3, "beta": 4}), ("keynorm", {"keep": 1}),
    ("keynorm", {"skip_layers": 0, "budget": 0.3}),  # every layer compressed (kvpress; the previous default)
    ("keynorm", {"order": "highest", "skip_layers": 1}),  # the naive top-norm baseline
    ("keynorm", {"skip_layers": 9}),  # more skipped layers than the cache has: every token kept
])
def test_selection_parameters(name, params):
    check(kernel_for(name, params), random_cache(layers=4, seq=64, heads=2, seed=len(str(params))))


def _cpu_scores(kernel, kv, stats):
    """The CPU policies' scores (before their argsort), forced tokens -inf: what the kernel reproduces."""
    _, lay = kernel.layout(tuple(kv.shape), kv.dtype)
    host = kv.cpu()
    rows = []
    for i, ctx in enumerate(layer_contexts(tuple(kv.shape), kv.dtype, [{k: v.cpu() for k, v in s.items()} for s in stats]
                                           if stats else None)):
        s = kv.shape[3]
        if kernel.name == "h2o":
            sc = stat(ctx, "attn_sum", "h2o").sum(dim=0)
        elif kernel.name == "keynorm":
            norms = host[i, 0].float().norm(dim=-1).sum(dim=0)
            sc = -norms if kernel.params["order"] == "lowest" else norms
        else:
            p = kernel.params
            sc = torch.cat([snap_scores(ctx, kernel.name, p["obs_window"], p["kernel_size"], p["pooling"]),
                            torch.zeros(min(p["obs_window"], s))])
        rows.append(sc.masked_fill(edge_mask(s, lay.first[i], lay.last[i]), float("-inf")))
    return torch.stack(rows)


@pytest.mark.parametrize("name,params", [("h2o", None), ("keynorm", None), ("keynorm", {"order": "highest"}),
                                         ("snapkv", None),
                                         ("snapkv", {"pooling": "max", "kernel_size": 4, "obs_window": 20})])
def test_scores_are_the_cpus_bit_for_bit(name, params):
    """Float32 scores in the CPU's exact operation order: 5 and 17 kv heads (one and two 16-row
    cascade chunks), columns past the last multiple of 32 (ATen's second summation order)."""
    kernel = kernel_for(name, params)
    for heads, seq, dim, dtype in ((5, 45, 64, torch.bfloat16), (17, 77, 96, torch.float32), (8, 6 + 32, 13, torch.float16)):
        if dtype == torch.float32 and dim % 8:
            continue
        kv = random_cache(layers=2, heads=heads, seq=seq, dim=dim, dtype=dtype, seed=heads)
        stats = stats_for(kernel, kv, seed=heads + seq)
        key, lay = kernel.layout(tuple(kv.shape), kv.dtype)
        meta, _ = selection._device_tables(key, str(kv.device))
        got = kernel.scores(kv, lay, meta, stats, True).cpu()
        want = _cpu_scores(kernel, kv, stats)
        assert torch.equal(got.view(torch.int32), want.view(torch.int32)), f"{name} scores, {heads} heads x {seq}"


def test_ties_go_to_the_earlier_token_as_on_the_cpu():
    kv = random_cache(layers=2, heads=4, seq=50, seed=9)
    kv[:, 0, :, 10:40] = kv[:, 0, :, 5:6]  # 30 keys with one norm per head: keynorm ties
    check(kernel_for("keynorm", {"skip_layers": 0}), kv)  # both layers compressed: the ties decide
    ties = [{"attn_sum": torch.randint(0, 3, (4, 50)).float().to(DEVICE)} for _ in range(2)]  # many equal sums
    check(kernel_for("h2o", {"recent_ratio": 0.2}), kv, ties)


def test_pyramid_layers_keep_different_counts_in_one_launch():
    kernel = kernel_for("pyramidkv", {"budget": 0.4})
    kv = random_cache(layers=5, seq=90, seed=4)
    check(kernel, kv)
    out = kernel.decode(kernel.encode(kv, stats_for(kernel, kv)), tuple(kv.shape), kv.dtype)
    counts = [layer.positions.numel() for layer in out]
    assert len(set(counts)) > 1 and counts == sorted(counts, reverse=True)
    assert all(layer.k.shape == (3, n, 64) and layer.k.dtype == kv.dtype for layer, n in zip(out, counts))
    assert out[1].k.untyped_storage().data_ptr() == out[0].k.untyped_storage().data_ptr()  # one buffer
    stats = stats_for(kernel, kv)
    stacked = kernel._stat(stats, "obs_attn", tuple(kv.shape), check=False)
    assert stacked.shape[0] == 5 and stacked.data_ptr() == stats[0]["obs_attn"].data_ptr()  # read in place


def test_row_copies_use_the_widest_aligned_word():
    words = {}
    for seq in (37, 48, 64):
        _, lay = kernel_for("streaming_llm").layout((2, 2, 3, seq, 64), torch.bfloat16)
        words[seq] = lay.word
    assert words == {37: 1, 48: 2, 64: 4}


@pytest.mark.parametrize("name", POLICIES)
def test_eager_baseline_writes_the_same_bytes(name):
    kernel = kernel_for(name)
    kv = random_cache(seq=40, seed=5)
    stats = stats_for(kernel, kv)
    fused, eager = kernel.encode(kv, stats), kernel.encode_eager(kv, stats)
    assert eager.offsets == fused.offsets and torch.equal(eager.data, fused.data)
    for a, b in zip(kernel.decode_eager(fused, tuple(kv.shape), kv.dtype), kernel.decode(fused, tuple(kv.shape), kv.dtype)):
        assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v) and torch.equal(a.positions, b.positions)


def test_bad_input_is_refused_with_a_clear_error():
    kv = random_cache(seq=20, seed=2)
    h2o = kernel_for("h2o")
    stats = stats_for(h2o, kv)
    bad = kv.clone()
    bad[2, 1, 0, 0, 3] = float("nan")  # a token no policy keeps still poisons the cache, as on the CPU
    with pytest.raises(KVError, match="NaN/Inf value.*layer 2 values"):
        kernel_for("streaming_llm").encode(bad)
    with pytest.raises(CodecError, match="needs the attention statistic 'attn_sum'"):
        h2o.encode(kv)
    with pytest.raises(KVError, match=r"expected \[3, 20\]"):
        h2o.encode(kv, [{"attn_sum": s["attn_sum"][:, :5]} for s in stats])
    nan_stats = [{"attn_sum": s["attn_sum"].clone()} for s in stats]
    nan_stats[1]["attn_sum"][0, 0] = float("inf")
    with pytest.raises(KVError, match="NaN/Inf in statistic"):
        h2o.encode(kv, nan_stats)
    with pytest.raises(CodecError, match="head_dim % 8"):
        kernel_for("keynorm").encode(random_cache(seq=9, dim=12, dtype=torch.float32))
    with pytest.raises(CodecError, match="obs_window > 255"):
        kernel_for("snapkv", {"obs_window": 300})

    shape = tuple(kv.shape)
    good = h2o.encode(kv, stats)
    with pytest.raises(WireError, match="no keep mask"):
        h2o.decode(GpuPayloads(good.data[:-1], good.offsets[:-1] + (good.offsets[-1] - 1,)), shape, kv.dtype)

    def damaged(at, xor):
        data = good.data.clone()
        data[good.offsets[1] + at] ^= xor
        return GpuPayloads(data, good.offsets)

    with pytest.raises(WireError, match="layer 1's section table"):
        h2o.decode(damaged(12, 1), shape, kv.dtype)
    with pytest.raises(WireError, match="layer 1's keep mask has bits set past"):
        h2o.decode(damaged(28 + 2, 0x80), shape, kv.dtype)  # 20 tokens: bits 4..7 of the third byte pad
    mask = good.data[good.offsets[1] + 28]
    bit = int((mask & -mask).item())  # lowest kept token of the first mask byte
    with pytest.raises(WireError, match="layer 1's keep mask's popcount"):
        h2o.decode(damaged(28, bit), shape, kv.dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA device")
@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compiled_selection_kernels_on_the_gpu(name, dtype):
    kernel = kernel_for(name)
    kv = random_cache(layers=4, heads=8, seq=4096, dim=128, dtype=dtype, seed=11, device="cuda")
    stats = check(kernel, kv, layers=[0, 3])
    fused, eager = kernel.encode(kv, stats, check=False), kernel.encode_eager(kv, stats)
    assert fused.offsets == eager.offsets
    host = cpu_payloads(kernel.codec, kv[1:2], [stats[1]] if stats else None)
    got = kernel.decode(GpuPayloads.from_bytes(host, "cuda"), (1,) + tuple(kv.shape[1:]), dtype)
    want = cpu_decoded(kernel.codec, host, (1,) + tuple(kv.shape[1:]), dtype)
    assert torch.equal(got[0].k.cpu(), want[0].k) and torch.equal(got[0].positions.cpu(), want[0].positions)
