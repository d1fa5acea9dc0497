"""Caches whose layers differ in length (window-trimmed sliding layers, issue #26): the places that used
to assume equal layers or positions 0..n-1.

A Gemma-3-like cache: sliding layers keep ``window - 1`` tokens from ``window_starts[i]``, full layers
the whole prefix; ``window_starts`` travels in the wire header's meta, as extraction writes it.

1. guardband plans over every layer's real shape (a strict target is met, or refused), pyramidkv keeps
   its budgets per group of equal layers;
2. KVQuant's pre-RoPE keys are un-rotated at the tokens' true positions (containers of models without
   windows unchanged);
3. raw bytes from a model's shape count a sliding layer's ``min(seq, window - 1)`` tokens
   (``kvwire.windows.kept_tokens``: GPU tables, recommend, job memory, models.csv);
4. the GPU kernels encode such a cache one group of equal layers at a time, each with its real layer
   contexts (``kernels.base.cache_group``), byte for byte as the CPU codec inside the container --
   what ``kernels.bench`` times (in Triton's interpreter here).
"""

import json

import pandas as pd
import pytest
import torch

from kvwire import rope, wire
from kvwire.codecs import LayerKV, build
from kvwire.codecs.base import pack_sections, tensor_bytes
from kvwire.errors import CodecError

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the kernels: compiled on a GPU, else interpreted
TYPES = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention", "sliding_attention",
         "full_attention"]
WINDOW, P = 64, 512  # sliding layers keep 63 tokens of a 512-token prefix


def windowed_cache(types=TYPES, window=WINDOW, prefix=P, heads=1, dim=64, dtype=torch.bfloat16, seed=0,
                   keys=None):
    """(layers, meta): a random cache whose sliding layers hold their last ``window - 1`` tokens."""
    g = torch.Generator().manual_seed(seed)
    starts = [max(0, prefix - window + 1) if "sliding" in t else 0 for t in types]
    layers = []
    for i, s in enumerate(starts):
        n = prefix - s
        k = keys(i, s, n) if keys else torch.randn(heads, n, dim, generator=g) * torch.rand(heads, n, 1, generator=g) * 4
        v = torch.randn(heads, n, dim, generator=g)
        layers.append(LayerKV(k.to(dtype), v.to(dtype)))
    meta = {"window_starts": starts, "prefix_len": prefix} if any(starts) else {"prefix_len": prefix}
    return layers, meta


def ratio(codec, layers, meta, stats=None):
    data = wire.encode(codec, layers, meta, stats=stats)
    return sum(x.raw_bytes for x in layers) / len(data), data


# ---- 1. guardband and pyramidkv plan over the real layer shapes -----------------------------------

STUDY = {"recent": 16, "min_body_bits": 4, "strict": True}  # config/config.yaml's guardband_8x, other targets


GB_TYPES = (["sliding_attention"] * 5 + ["full_attention"]) * 2  # Gemma-3's pattern, 12 layers


def gb_cache():
    return windowed_cache(types=GB_TYPES, window=128, prefix=1024)  # 10 layers of 127 tokens, 2 of 1024


@pytest.mark.parametrize("target", [2.5, 3.0, 4.0])
def test_guardband_meets_a_strict_target_on_layers_of_different_lengths(target):
    """Before: each layer planned the whole cache as if every layer had ITS shape, so the long layers
    (planned as if the cache were all long) and the short ones (as if it were all short) did not add
    up: 2.39x / 2.62x / 3.16x for these targets, 6.19x for 8x on the real Gemma-3 at 2048 tokens."""
    layers, meta = gb_cache()
    codec = build("guardband", {**STUDY, "target_ratio": target})
    r, data = ratio(codec, layers, meta)
    assert target <= r <= target * 1.02
    header, decoded = wire.decode(data)
    plan = codec.tensor.plan(header.context(0))
    assert plan.feasible and plan.regime == "drop"
    for layer, lp, out in zip(layers, plan.layers, decoded):  # each layer's plan is of its own length
        assert lp.sinks + lp.recent + lp.body == layer.k.shape[1]
        assert out.k.shape[1] == (lp.sinks + lp.recent + lp.kept if lp.drop else layer.k.shape[1])
    body = [lp for lp in plan.layers if not lp.guard_layer]
    shares = [lp.kept / lp.body for lp in body]
    assert max(shares) - min(shares) < 0.05  # every body layer keeps about the same share of its body
    assert min(lp.kept for lp in body if lp.body == 1024 - 20) > max(lp.kept for lp in body if lp.body == 127 - 20)


def test_guardband_strict_refuses_what_the_real_shapes_cannot_reach():
    """The guard bands of these shapes allow 4.3x at most: strict refuses 5x (before: it sent 3.6x)."""
    layers, meta = gb_cache()
    codec = build("guardband", {**STUDY, "target_ratio": 5.0})
    with pytest.raises(CodecError, match=r"unreachable for 12 layers of shape \[1, 127\|1024, 64\]"):
        wire.encode(codec, layers, meta)
    best = build("guardband", {**STUDY, "target_ratio": 5.0, "strict": False})
    r, _ = ratio(best, layers, meta)
    plan = best.tensor.plan(wire.make_header(best, layers, meta).context(0))
    assert plan.regime == "unreachable" and r == pytest.approx(plan.ratio, rel=0.01)


def test_guardband_plan_of_equal_layers_is_the_one_shape_plan():
    """One shape everywhere: the per-layer planner reduces to the old one (same bytes as before: the
    study's other tests pin its ratios and payloads)."""
    from kvwire.codecs.guardband import plan_cache

    items = tuple(sorted(build("guardband", STUDY).params.items()))
    equal = plan_cache("guardband", items, [(1, 512, 64)] * 6, torch.bfloat16)
    assert len({lp.kept for lp in equal.layers[1:-1]}) <= 2 and equal.layers[0] == equal.layers[-1]
    assert all(lp.body == 512 - 4 - 16 for lp in equal.layers)


def test_pyramidkv_budgets_are_per_group_of_equal_layers():
    """Each group of equal layers keeps exactly its uniform total, budgets shrink with depth within a
    group and never exceed a layer's length. Before: every layer took its row of a pyramid built as if
    all layers had its own length, so the cache kept another total than the uniform budget's."""
    from kvwire.codecs.selection import n_keep

    layers, meta = windowed_cache(prefix=256, window=96)
    stats = [{"obs_attn": torch.rand(1, 32, x.k.shape[1])} for x in layers]
    codec = build("pyramidkv", {"budget": 0.5})
    _, data = ratio(codec, layers, meta, stats)
    _, decoded = wire.decode(data)
    kept = [x.k.shape[1] for x in decoded]
    for length in {x.k.shape[1] for x in layers}:
        group = [i for i, x in enumerate(layers) if x.k.shape[1] == length]
        assert sum(kept[i] for i in group) == len(group) * n_keep(length, 0.5, 0)
        assert all(kept[a] >= kept[b] for a, b in zip(group, group[1:]))
        assert all(kept[i] <= length for i in group)


# ---- 2. KVQuant's pre-RoPE keys at their true positions -------------------------------------------

INV_FREQ = 1.0 / (10000.0 ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64))


def _rotated_keys(i, start, n):
    """Post-RoPE keys at positions start.. of pre-RoPE keys with KVQuant's structure: a few loud channels
    (per-channel quantization keeps them apart from the quiet ones only before the rotation mixes pairs)."""
    g = torch.Generator().manual_seed(10 + i)
    pre = torch.randn(2, n, 64, generator=g) * 0.05
    pre[:, :, :4] += 30 + torch.randn(2, n, 4, generator=g)  # loud channels whose pair partners (32..35) are quiet
    return rope.rotate(pre, torch.arange(n) + start, INV_FREQ)


def _rope_stats(n):
    return [{"rope_inv_freq": INV_FREQ.clone(), "rope_scaling": torch.ones(1)} for _ in range(n)]


def test_kvquant_pre_rope_unrotates_trimmed_layers_at_their_true_positions(monkeypatch):
    """The keys KVQuant quantizes are the PRE-RoPE keys: un-rotated at the stored tokens' original
    positions (``window_starts[i] + 0 .. n - 1``). Before: at 0..n-1, i.e. still rotated by the window
    start's angle on every channel pair (the real Gemma-3: token agreement 0.9325 instead of 0.9603)."""
    pres = {}

    def keys(i, start, n):
        g = torch.Generator().manual_seed(10 + i)
        pres[i] = torch.randn(2, n, 64, generator=g) + torch.linspace(-8, 8, 64)  # per-channel offsets
        return rope.rotate(pres[i], torch.arange(n) + start, INV_FREQ)

    layers, meta = windowed_cache(heads=2, keys=keys, dtype=torch.float32)
    codec = build("kvquant4", {"pre_rope": True})
    seen = []
    original = type(codec.tensor)._encode_tensor

    def spy(self, x, red, label, ctx):
        if label == "keys":
            seen.append((ctx.layer, x.clone()))
        return original(self, x, red, label, ctx)

    monkeypatch.setattr(type(codec.tensor), "_encode_tensor", spy)
    data = wire.encode(codec, layers, meta, stats=_rope_stats(len(layers)))
    assert [i for i, _ in seen] == list(range(len(layers)))
    for i, quantized in seen:
        assert torch.allclose(quantized, pres[i], atol=1e-4), f"layer {i} (start {meta['window_starts'][i]})"
    # decode rotates back at the same positions: the round trip is the quantization error, no rotation
    for x, d in zip(layers, wire.decode(data)[1]):
        assert float((d.k - x.k).pow(2).mean() / x.k.pow(2).mean()) < 2e-3


def test_kvquant_pre_rope_is_unchanged_without_windows():
    """Containers of models without windows are byte for byte what the codec wrote before: keys
    un-rotated at 0..n-1 (the previous code, spelled out here), then the same sections."""
    layers, meta = windowed_cache(types=["full_attention"] * 3, heads=2, keys=_rotated_keys, dtype=torch.bfloat16)
    assert "window_starts" not in meta
    stats = _rope_stats(3)
    codec = build("kvquant4", {"pre_rope": True})
    data = wire.encode(codec, layers, meta, stats=stats)
    header, frames = wire.read_frames(data)
    tensor = codec.tensor
    for i, (layer, frame) in enumerate(zip(layers, frames)):
        ctx = header.context(i, stats[i])
        keys = rope.rotate(layer.k, torch.arange(layer.k.shape[1]), INV_FREQ, 1.0, inverse=True)
        old = pack_sections(tensor._encode_tensor(keys, 1, "keys", ctx) + tensor._encode_tensor(layer.v, 2, "values", ctx)
                            + [tensor_bytes(torch.cat([INV_FREQ, torch.tensor([1.0])]))])
        assert frame.payload == old


def test_kvquant_pre_rope_round_trip_is_exact_on_trimmed_layers():
    """Encoder and decoder take the start from the same header: decoding gives the encoder's reconstruction."""
    layers, meta = windowed_cache(heads=2, keys=_rotated_keys, dtype=torch.float32)
    codec = build("kvquant4", {"pre_rope": True, "outlier_fraction": 0.0})
    data = wire.encode(codec, layers, meta, stats=_rope_stats(len(layers)))
    a, b = wire.decode(data)[1], wire.decode(bytes(data))[1]
    assert all(torch.equal(x.k, y.k) for x, y in zip(a, b))
    assert all(float((x.k - y.k).abs().max()) < 1.0 for x, y in zip(a, layers))  # 4 bits of a +-31 range


# ---- 3. raw bytes from a model's shape count the kept tokens ---------------------------------------

GEMMA_TYPES = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)]


def test_kept_tokens_is_extractions_rule():
    from kvwire.kv import decode_window_start
    from kvwire.windows import kept_tokens, layer_letters, layout_of, parse_layer_types

    assert kept_tokens(GEMMA_TYPES, 512, 2048) == [511] * 5 + [2048] + [511] * 5 + [2048] + [511] * 5 + [2048]
    for seq in (1, 255, 511, 512, 513, 2048, 32768):
        assert kept_tokens(["sliding_attention"], 512, seq) == [seq - decode_window_start(512, seq)]
    assert kept_tokens(None, None, 100, n_layers=3) == [100] * 3
    assert kept_tokens(None, 4096, 8192, n_layers=2) == [4095] * 2  # a window without layer types: all slide
    assert kept_tokens(GEMMA_TYPES, None, 2048) == [2048] * 18  # no window: nothing slides
    assert parse_layer_types(layer_letters(GEMMA_TYPES)) == GEMMA_TYPES
    assert layout_of({"sliding_window": 512, "_sliding_window_pattern": 6, "num_hidden_layers": 18}) == (GEMMA_TYPES, 512)
    assert layout_of({"sliding_window": float("nan"), "layer_types": float("nan")}) == (None, None)


def test_gpu_break_even_counts_kept_tokens_and_scales_whole_prefix_timings():
    """A GPU timing row of Gemma-3's shape timed on the whole prefix (before trimming) counts the
    kept tokens' raw bytes, with times and payload scaled to them; a row timed on the trimmed cache
    (``layer_tokens``) is used as it is; the pipelined split is by layer tokens."""
    from kvwire.stages.gpu_tables import break_even
    from kvwire.transfer import CodecCost
    from kvwire.transfer import break_even_gbps

    full = 18 * 2 * 256 * 2 * 2048
    kept = (15 * 511 + 3 * 2048) * 2 * 256 * 2
    base = dict(gpu="H", copy_gbps=1.0, model="gemma-3-270m", layers=18, kv_heads=1, seq=2048, head_dim=256,
                dtype="bfloat16", codec="int8", identical_to_cpu=True, frac_copy=0.5, gbps=1.0)
    old = [{**base, "impl": "triton", "op": op, "ms": ms, "raw_bytes": full, "payload_bytes": full // 2}
           for op, ms in (("encode", 0.2), ("decode", 0.1))]
    new = [{**r, "codec": "int4", "raw_bytes": kept, "payload_bytes": kept // 4, "layer_tokens": "5x511+1x2048+"
            "5x511+1x2048+5x511+1x2048"} for r in old]
    llama = [{**r, "model": "llama-3.1-8b", "layers": 32, "kv_heads": 8, "head_dim": 128,
              "raw_bytes": 32 * 2 * 8 * 128 * 2 * 2048, "payload_bytes": 2**20} for r in old]
    be = break_even(pd.DataFrame(old + new + llama)).set_index(["model", "codec"])
    f = kept / full
    row = be.loc[("gemma-3-270m", "int8")]
    assert row.raw_bytes == kept and row.timed_raw_bytes == full
    assert row.encode_ms == pytest.approx(0.2 * f) and row.wire_bytes == pytest.approx(full // 2 * f)
    assert "scaled to the" in row.per_layer_time
    tokens = [511] * 5 + [2048] + [511] * 5 + [2048] + [511] * 5 + [2048]
    want = CodecCost.uniform(kept, full // 2 * f, 0.2e-3 * f, 0.1e-3 * f, tokens)
    assert row.break_even_gbps_pipelined == pytest.approx(break_even_gbps(want, "pipelined"))
    row = be.loc[("gemma-3-270m", "int4")]
    assert row.raw_bytes == kept and row.encode_ms == 0.2 and "scaled" not in row.per_layer_time
    row = be.loc[("llama-3.1-8b", "int8")]  # no windows: as before
    assert row.per_layer_time == "cache time / layers" and row.timed_raw_bytes == row.raw_bytes


def test_recommend_counts_a_gemma_caches_kept_bytes(tmp_path):
    from kvwire.recommend import CachedTables, recommend

    full = 18 * 2 * 256 * 2 * 2048
    rows = [{"device": "cpu", "device_name": "C", "model": "gemma3-270m", "layers": 18, "kv_heads": 1,
             "head_dim": 256, "seq": 2048, "dtype": "bfloat16", "codec": "int8", "raw_bytes": full,
             "wire_bytes": full / 2, "encode_ms": 10.0, "decode_ms": 10.0}]
    pd.DataFrame(rows).to_csv(tmp_path / "break_even_all.csv", index=False)
    pd.DataFrame([{"model": "gemma3-270m", "codec": "int8", "token_agreement": 0.99, "ratio": 2.0}]).to_csv(
        tmp_path / "quality.csv", index=False)
    # models.csv as published before its layer_types column: the packaged Gemma-3 card gives them
    pd.DataFrame([{"name": "gemma3-270m", "num_layers": 18, "num_kv_heads": 1, "head_dim": 256,
                   "sliding_window": 512}]).to_csv(tmp_path / "models.csv", index=False)
    rec = recommend(CachedTables(tmp_path), "gemma3-270m", 4096, 1.0)
    kept = (15 * 511 + 3 * 4096) * 2 * 256 * 2
    assert rec.raw_s == pytest.approx(kept * 8 / 1e9)
    assert any("whole prefix" in n for n in rec.notes)
    c = rec.candidates.set_index("codec")
    assert c.loc["int8", "encode_ms"] == pytest.approx(10.0 * kept / full)
    # the same tables with models.csv's own layer_types column
    pd.DataFrame([{"name": "gemma3-270m", "num_layers": 18, "num_kv_heads": 1, "head_dim": 256,
                   "sliding_window": 512, "layer_types": "SSSSSF" * 3}]).to_csv(tmp_path / "models.csv", index=False)
    assert recommend(CachedTables(tmp_path), "gemma3-270m", 4096, 1.0).raw_s == pytest.approx(rec.raw_s)


def test_models_table_writes_the_layout(tmp_path):
    from kvwire.stages.tables import models_table
    from kvwire.windows import layout_of

    gemma, smol = tmp_path / "g.json", tmp_path / "s.json"
    gemma.write_text(json.dumps({"name": "g", "num_layers": 18, "sliding_window": 512, "layer_types": GEMMA_TYPES}))
    smol.write_text(json.dumps({"name": "s", "num_layers": 2, "sliding_window": None,
                                "layer_types": ["full_attention"] * 2}))
    models_table([gemma, smol], tmp_path / "models.csv")
    t = pd.read_csv(tmp_path / "models.csv").set_index("name")
    assert t.loc["g", "layer_types"] == "SSSSSF" * 3 and layout_of(t.loc["g"].to_dict()) == (GEMMA_TYPES, 512)
    assert layout_of(t.loc["s"].to_dict())[1] is None


def test_job_memory_counts_the_kept_cache():
    from kvwire.resources import card_shape, peak_estimate_mb

    gemma = card_shape("google/gemma-3-270m")
    assert gemma["sliding_window"] == 512 and gemma["layer_types"] == GEMMA_TYPES
    cache = (15 * 511 + 3 * 2048) * 2 * 256 * 2
    assert peak_estimate_mb("encode", gemma, tokens=2048) == pytest.approx(3 * cache / 2**20)
    full = dict(gemma, sliding_window=None)
    assert peak_estimate_mb("extract_kv", gemma, tokens=2048) == peak_estimate_mb("extract_kv", full, tokens=2048)


# ---- 4. the GPU kernels on a cache of unequal layers (Triton's interpreter without a GPU) -----------

KERNEL_CASES = [
    ("guardband", {"target_ratio": 1.8, "recent": 4, "sinks": 2, "strict": True}),  # mix: 8 / 4 bits
    ("guardband", {"target_ratio": 2.2, "recent": 4, "sinks": 2, "min_body_bits": 4, "strict": True}),  # drop
    ("kvquant4", {"pre_rope": True}),
    ("cachegen", {}),
    ("cachegen", {"entropy": "none"}),
    ("int8", {}),
    ("pyramidkv", {"budget": 0.5}),
]


@pytest.mark.parametrize("name,params", KERNEL_CASES)
def test_kernels_encode_groups_of_equal_layers_as_the_cpu_codec_in_the_container(name, params):
    """Before: such a cache did not stack into the kernels' [layers, 2, heads, seq, head_dim] input at
    all, and a stack of one group's layers planned (guardband, pyramidkv), tiered (CacheGen) and
    rotated (KVQuant pre-RoPE, at 0..n-1) as if it were the whole cache."""
    pytest.importorskip("triton")
    from kvwire.kernels.base import as_layers, cache_group, kernel_for, same_layers
    from kvwire.kernels.bench import stack_groups

    layers, meta, stats = _kernel_cache()
    kernel = kernel_for(name, params)
    data = wire.encode(kernel.codec, layers, meta, stats=stats)
    want = [f.payload for f in wire.read_frames(data)[1]]
    decoded = wire.decode(data)[1]
    parts = stack_groups(layers, meta["window_starts"], stats, DEVICE)
    assert [g.layers for g, _, _ in parts] == [(0, 2, 3), (1, 4)]
    for group, kv, st in parts:
        with cache_group(group):
            got = kernel.encode(kv, st)
            dec = as_layers(kernel.decode(got, tuple(kv.shape), kv.dtype))
        for j, i in enumerate(group.layers):
            assert got.layer(j).cpu().numpy().tobytes() == want[i], f"layer {i}"
            assert same_layers([dec[j]], [decoded[i]]), f"layer {i}"


def _kernel_cache():
    types = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    layers, meta = windowed_cache(types=types, window=24, prefix=64, heads=2, dim=64, keys=_rotated_keys)
    stats = [{**_rope_stats(1)[0], "obs_attn": torch.rand(2, 32, x.k.shape[1], generator=torch.Generator().manual_seed(i))}
             for i, x in enumerate(layers)]
    return layers, meta, stats


def test_bench_checks_a_real_trimmed_cache_group_by_group(tmp_path):
    """``check_real_caches`` (what ``time_gpu`` runs on real KV files first) on a saved trimmed record."""
    pytest.importorskip("triton")
    from kvwire.stages.gpu_bench import check_real_caches
    from kvwire.kv import KVRecord, save_kv

    layers, meta, stats = _kernel_cache()
    path = tmp_path / "kv.safetensors"
    save_kv(path, KVRecord(layers=layers, meta=dict(meta), stats=stats))
    lines = check_real_caches([path], ["kvquant4_prerope", "cachegen_none", "pyramidkv"], device=DEVICE)
    assert len(lines) == 3 and all("5 layers of 3x23+2x64 tokens" in line for line in lines)
    assert all("payload identical True" in line and "decode identical True" in line for line in lines)


def test_describe_tokens_and_the_bench_shapes():
    from kvwire.kernels.bench import describe_tokens, layer_tokens

    assert describe_tokens(layer_tokens("gemma-3-270m", 18, 2048)) == "15x511+3x2048"
    assert layer_tokens("gemma-3-270m", 18, 256) == [256] * 18
    assert layer_tokens("llama-3.1-8b", 32, 32768) == [32768] * 32


def test_time_shape_times_a_windowed_cache_as_one_call_over_its_groups(monkeypatch):
    """The bench's grouped path (on the CPU, in the interpreter, with a call counter for a clock):
    every timed call runs every group once, raw bytes count the kept tokens, and the CPU-codec checks
    run per group and name the layers' cache indices."""
    pytest.importorskip("triton")
    from kvwire.kernels import bench
    from kvwire.kernels.base import current_group

    calls = []

    def fake_time(do_bench, fn, rep_ms):
        fn()
        return 1.0

    monkeypatch.setattr(bench, "_time", fake_time)
    monkeypatch.setattr(bench, "_wall_ms", lambda fn: (fn(), 1.0)[1])
    kernels = bench.bench_kernels(["int8", "kvquant4_prerope", "cachegen"])
    int8 = kernels[0][1]
    original = type(int8).encode

    def counted(self, kv, stats=None, *, check=True):
        g = current_group(kv.shape[0], (kv.shape[2], kv.shape[3], kv.shape[4]))
        calls.append(None if g is None else g.layers)
        return original(self, kv, stats, check=check)

    monkeypatch.setattr(type(int8), "encode", counted)
    tokens = [15, 15, 48, 15, 15, 48]  # window 16 at 48 tokens: Gemma's pattern, 6 layers
    rows = bench.time_shape(None, "tiny", (6, 2, 1, 48, 64), torch.bfloat16, kernels, gpu="cpu", copy_gbps=1.0,
                            l2_bytes=1, rep_ms=1, tokens=tokens, device="cpu", log=lambda s: None)
    t = pd.DataFrame(rows)
    assert set(t.raw_bytes) == {sum(tokens) * 2 * 64 * 2} and set(t.layer_tokens) == {"4x15+2x48"}
    assert t.conformant.dropna().astype(bool).all() and t.identical_to_cpu.dropna().astype(bool).all()
    assert set(t.checked_layers) == {"0 2 4 5"}  # first and last layer of each group, as cache indices
    assert {"host"} <= set(t[t.codec == "cachegen"].impl)
    timed = [c for c in calls if c is not None]
    assert timed and all(c in ((0, 1, 3, 4), (2, 5)) for c in timed)
    assert timed.count((0, 1, 3, 4)) == timed.count((2, 5))  # every call runs both groups
    plain = pd.DataFrame(bench.time_shape(None, "tiny", (6, 2, 1, 48, 64), torch.bfloat16, kernels[:1], gpu="cpu",
                                          copy_gbps=1.0, l2_bytes=1, rep_ms=1, device="cpu", log=lambda s: None))
    assert set(plain.layer_tokens) == {"6x48"} and set(plain.raw_bytes) == {6 * 48 * 2 * 64 * 2}


def test_time_real_times_the_files_own_data_groups_and_statistics(monkeypatch, tmp_path):
    """Real-cache timing (issue 27), on the CPU in the interpreter: the file's layer lengths and window
    starts make the groups, its data is what the kernel encodes (the payload is the CPU codec's on the
    file), its statistics feed a codec that needs them, a codec whose statistics it lacks is skipped,
    and the rows name the file in ``cache``; the GPU summaries keep only synthetic rows."""
    pytest.importorskip("triton")
    from kvwire.kernels import bench
    from kvwire.kv import KVRecord, load_kv, save_kv
    from kvwire.stages.gpu_bench import time_real
    from kvwire.stages.gpu_tables import read_gpu_tables

    monkeypatch.setattr(bench, "_time", lambda do_bench, fn, rep_ms: (fn(), 1.0)[1])
    monkeypatch.setattr(bench, "_wall_ms", lambda fn: (fn(), 1.0)[1])
    g = torch.Generator().manual_seed(3)
    tokens, starts = [15, 48, 15, 48], [33, 0, 33, 0]
    layers = [LayerKV((torch.randn(1, t, 64, generator=g) * (1 + 4 * torch.rand(1, t, 1, generator=g))).bfloat16(),
                      torch.randn(1, t, 64, generator=g).bfloat16()) for t in tokens]
    path = tmp_path / "real.safetensors"
    save_kv(path, KVRecord(layers=layers, meta={"model": "tiny-real", "window_starts": starts}))
    logs = []
    kernels = bench.bench_kernels(["int8", "cachegen", "snapkv"])
    rows = time_real(None, [path], kernels, gpu="cpu", copy_gbps=1.0, l2_bytes=1, rep_ms=1, device="cpu",
                           log=logs.append)
    t = pd.DataFrame(rows)
    assert set(t.cache) == {"real.safetensors"} and set(t.model) == {"tiny-real"}
    assert set(t.codec) == {"int8", "cachegen"} and any("snapkv: skipped" in line for line in logs)
    assert set(t.layer_tokens) == {"2x15+2x48"} and set(t.seq) == {48}
    assert set(t.raw_bytes) == {load_kv(path).raw_bytes}
    assert t.conformant.dropna().astype(bool).all() and t.identical_to_cpu.dropna().astype(bool).all()
    synthetic = pd.DataFrame(bench.time_shape(None, "tiny-real", (4, 2, 1, 48, 64), torch.bfloat16, kernels[:2],
                                              gpu="cpu", copy_gbps=1.0, l2_bytes=1, rep_ms=1, tokens=tokens,
                                              device="cpu", log=lambda s: None))
    assert set(synthetic.cache) == {"synthetic"}
    # different data, different entropy-coded size: which cache was timed matters
    assert (t[t.codec == "cachegen"].payload_bytes.iloc[0] != synthetic[synthetic.codec == "cachegen"].payload_bytes.iloc[0])
    both = tmp_path / "gpu.csv"
    pd.concat([t, synthetic.drop(columns=["cache"])]).to_csv(both, index=False)
    read = read_gpu_tables([both])
    assert sorted(set(read.cache)) == ["real.safetensors", "synthetic"]
