"""KV extraction and re-injection: the round trip must equal an uninterrupted forward pass."""

import pytest
import torch

from kvwire import wire
from kvwire.codecs import LayerKV, build
from kvwire.errors import KVError
from kvwire.kv import KVRecord, build_cache, continue_logits, greedy_against, greedy_generate, load_kv, prefill, save_kv
from kvwire.quality import score_batch


def tiny_gemma3(sliding_window=6):
    """A random Gemma-3 text model with sliding-window and full layers, to catch the position pitfall."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                           sliding_window=sliding_window, layer_types=["sliding_attention", "sliding_attention",
                                                                       "full_attention"],
                           max_position_embeddings=128)
    return Gemma3ForCausalLM(cfg).eval()


def _round_trip_error(model, prefix=24, cont=9, batch=3):
    torch.manual_seed(1)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (batch, prefix + cont))
    with torch.inference_mode():
        full = model(input_ids=ids).logits.float()
    layers, first = prefill(model, ids[:, :prefix])
    assert torch.equal(first, full[:, prefix - 1].argmax(-1))
    logits = continue_logits(model, layers, prefix, ids[:, prefix:])
    return (logits - full[:, prefix:]).abs().max().item(), layers


def test_round_trip_equals_uninterrupted_forward(small_model):
    err, layers = _round_trip_error(small_model)
    cfg = small_model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    assert layers[0][0].k.shape == (cfg.num_key_value_heads, 24, head_dim)  # GQA: kv heads, not query heads
    assert err < 1e-4


def test_round_trip_with_sliding_window_layers_longer_than_window():
    model = tiny_gemma3(sliding_window=6)
    err, layers = _round_trip_error(model, prefix=20)  # prefix far beyond the window
    assert all(layer.k.shape[1] == 20 for layer in layers[0])  # sliding layers keep the whole prefix
    assert err < 1e-4


def test_greedy_after_injection_matches_uninterrupted_generation(small_model):
    torch.manual_seed(2)
    ids = torch.randint(3, small_model.config.vocab_size, (2, 16))
    layers, first = prefill(small_model, ids)
    gen = greedy_generate(small_model, layers, 16, first, 6)
    seq = torch.cat([ids, first.view(-1, 1)], 1)
    with torch.inference_mode():
        for _ in range(6):
            nxt = small_model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(gen, seq[:, 17:])


def _perturbed(layers, scale, seed):
    g = torch.Generator().manual_seed(seed)
    return [[LayerKV(l.k + scale * torch.randn(l.k.shape, generator=g), l.v + scale * torch.randn(l.v.shape, generator=g))
             for l in row] for row in layers]


@pytest.mark.parametrize("scale", [0.0, 0.05, 0.5, 5.0])
def test_greedy_against_a_draft_equals_free_greedy_generation(small_model, scale):
    """The verify-then-step shortcut gives what step-by-step greedy decoding gives, wherever rows diverge."""
    torch.manual_seed(3)
    ids = torch.randint(3, small_model.config.vocab_size, (4, 20))
    layers, first = prefill(small_model, ids)
    draft = greedy_generate(small_model, layers, 20, first, 12)
    noisy = _perturbed(layers, scale, seed=4)
    free = greedy_generate(small_model, noisy, 20, first, 12)
    assert torch.equal(greedy_against(small_model, noisy, 20, first, draft), free)
    if scale >= 5.0:
        assert not torch.equal(free, draft)  # the case under test really diverges


def test_greedy_against_a_token_selected_cache(small_model):
    torch.manual_seed(5)
    ids = torch.randint(3, small_model.config.vocab_size, (2, 24))
    layers, first = prefill(small_model, ids)
    keep = torch.tensor([0, 1, 2, 5, 9, 14, 20, 21, 22, 23])
    pruned = [[LayerKV(l.k[:, keep], l.v[:, keep], keep) for l in row] for row in layers]
    draft = greedy_generate(small_model, layers, 24, first, 8)
    assert torch.equal(greedy_against(small_model, pruned, 24, first, draft),
                       greedy_generate(small_model, pruned, 24, first, 8))


def test_cache_with_spare_room_and_dtype_cast(small_model):
    layers = [[LayerKV(torch.randn(2, 5, 4).bfloat16(), torch.randn(2, 5, 4).bfloat16()) for _ in range(2)]]
    cache = build_cache(layers, dtype=torch.float32, spare=3)
    k, v = cache.layers[0].update(torch.ones(1, 2, 2, 4), torch.zeros(1, 2, 2, 4))
    assert k.dtype == torch.float32 and k.shape == (1, 2, 7, 4) and cache.get_seq_length() == 7
    assert torch.equal(k[0, :, :5], layers[0][0].k.float()) and bool((k[0, :, 5:] == 1).all())
    k, _ = cache.layers[0].update(torch.ones(1, 2, 2, 4), torch.zeros(1, 2, 2, 4))  # beyond the spare room
    assert k.shape == (1, 2, 9, 4)
    cache.layers[0].truncate(6)
    assert cache.layers[0].get_seq_length() == 6


def test_save_load_round_trip_exact(tmp_path):
    layers = [LayerKV(torch.randn(2, 5, 4).bfloat16(), torch.randn(2, 5, 4).bfloat16()) for _ in range(3)]
    rec = KVRecord(layers, torch.arange(5), torch.arange(5, 9), 7, {"prompt_id": "x"})
    save_kv(tmp_path / "a.safetensors", rec)
    back = load_kv(tmp_path / "a.safetensors")
    assert back.first_token == 7 and back.meta == {"prompt_id": "x"} and back.seq_len == 5
    from safetensors import safe_open

    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as fh:
        assert torch.equal(fh.get_tensor("positions"), torch.arange(5))
        assert fh.get_tensor("layer.0.k").dtype == torch.bfloat16
    for a, b in zip(layers, back.layers):
        assert torch.equal(a.k, b.k) and b.k.dtype == torch.bfloat16 and b.positions is None


def test_load_rejects_nan_missing_and_foreign_files(tmp_path):
    k = torch.randn(1, 3, 4)
    k[0, 1, 1] = float("nan")
    save_kv(tmp_path / "nan.safetensors", KVRecord([LayerKV(k, torch.zeros(1, 3, 4))], torch.arange(3)))
    with pytest.raises(KVError, match="NaN/Inf in layer 0 keys"):
        load_kv(tmp_path / "nan.safetensors")
    with pytest.raises(KVError, match="not found"):
        load_kv(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(KVError, match="not a kvwire KV file"):
        load_kv(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(KVError, match="unreadable"):
        load_kv(tmp_path / "junk.safetensors")


def _records(model, n=3, prefix=20, cont=10):
    torch.manual_seed(3)
    ids = torch.randint(3, model.config.vocab_size, (n, prefix + cont))
    layers, first = prefill(model, ids[:, :prefix])
    return [KVRecord(layers[b], ids[b, :prefix], ids[b, prefix:], int(first[b]), {"prompt_id": f"p{b}"})
            for b in range(n)]


def test_identity_quality_is_exact(small_model):
    records = _records(small_model)
    decoded = [wire.decode(wire.encode(build("identity"), r.layers))[1] for r in records]
    for row in score_batch(small_model, records, decoded, steps=5):
        assert row["token_agreement"] == 1.0 and row["delta_ce"] == 0.0
        assert row["greedy_match"] == 1.0 and row["first_divergence"] == 5
        assert row["key_cosine"] == 1.0 and row["value_rel_mse"] == 0.0


def test_lossy_quality_is_measured_not_assumed(small_model):
    """int8 keeps quality close; a cache whose values are detached from their keys scores worse.
    (Flipping K and V together would change nothing: attention over a cache is order-free.)"""
    records = _records(small_model)
    int8 = [wire.decode(wire.encode(build("int8"), r.layers))[1] for r in records]
    rows8 = score_batch(small_model, records, int8, steps=5)
    scrambled = [[LayerKV(layer.k, layer.v.flip(1)) for layer in r.layers] for r in records]
    rows_bad = score_batch(small_model, records, scrambled, steps=5)
    mean = lambda rows, m: sum(r[m] for r in rows) / len(rows)  # noqa: E731
    assert mean(rows8, "token_agreement") >= mean(rows_bad, "token_agreement")
    assert abs(mean(rows8, "delta_ce")) < abs(mean(rows_bad, "delta_ce"))
    assert 0.99 < mean(rows8, "key_cosine") < 1.0


def test_cached_reference_scores_like_the_inline_one(small_model):
    """Scoring against a reference computed once equals scoring with the reference run inline."""
    from kvwire.quality import reference_batch

    records = _records(small_model)
    refs = reference_batch(small_model, records, steps=5)
    for name in ("identity", "int4"):
        decoded = [wire.decode(wire.encode(build(name), r.layers))[1] for r in records]
        inline = score_batch(small_model, records, decoded, steps=5)
        cached = score_batch(small_model, records, decoded, steps=5, references=refs)
        assert cached == inline
    assert all(row["token_agreement"] == 1.0 and row["delta_ce"] == 0.0 for row in
               score_batch(small_model, records, [r.layers for r in records], steps=5, references=refs))
    with pytest.raises(KVError, match="stale reference"):
        score_batch(small_model, records, [r.layers for r in records], steps=4, references=refs)
    with pytest.raises(KVError, match="references for"):
        score_batch(small_model, records, [r.layers for r in records], steps=5, references=refs[:1])


def test_bit_identical_caches_reuse_the_reference_with_the_same_rows(small_model):
    """A lossless codec's rows taken from the reference equal the rows its own forward gives; a cache
    one value off is not bit-identical and runs its forward."""
    from kvwire.quality import bit_identical, reference_batch

    records = _records(small_model)
    refs = reference_batch(small_model, records, steps=5)
    decoded = [wire.decode(wire.encode(build("zstd"), r.layers))[1] for r in records]
    assert all(bit_identical(r.layers, d) for r, d in zip(records, decoded))
    ran = score_batch(small_model, records, decoded, steps=5, references=refs)
    reused = score_batch(small_model, records, decoded, steps=5, references=refs, reuse_exact=True)
    assert reused == ran
    nudged = [[LayerKV(layer.k.clone(), layer.v) for layer in d] for d in decoded]
    nudged[0][0].k[0, 0, 0] = torch.nextafter(nudged[0][0].k[0, 0, 0], torch.tensor(1e9, dtype=nudged[0][0].k.dtype))
    assert not bit_identical(records[0].layers, nudged[0])
    int4 = [wire.decode(wire.encode(build("int4"), r.layers))[1] for r in records]
    assert score_batch(small_model, records, int4, steps=5, references=refs, reuse_exact=True) == \
        score_batch(small_model, records, int4, steps=5, references=refs)


def test_reference_file_is_checked_against_the_job(small_model, tmp_path):
    """A cached reference made with other settings or prompts is refused, naming the difference."""
    from kvwire.quality import reference_batch
    from kvwire.stages.quality import REFERENCE_FORMAT, load_reference
    from safetensors.torch import save_file

    refs = reference_batch(small_model, _records(small_model, n=2), steps=3)
    tensors = {}
    for stem, ref in zip(("a", "b"), refs):
        tensors.update({f"{stem}.argmax": ref.argmax, f"{stem}.ce": ref.ce, f"{stem}.greedy": ref.greedy})
    path = tmp_path / "ref.safetensors"
    save_file(tensors, str(path), metadata={"format": REFERENCE_FORMAT, "prompts": '["a", "b"]',
                                            "generate_tokens": "3", "batch_size": "8", "dtype": "bfloat16",
                                            "cpu_seconds": "1.5"})
    loaded, cpu = load_reference(path, ["a", "b"], generate_tokens=3, batch_size=8, dtype="bfloat16")
    assert cpu == 1.5 and torch.equal(loaded["b"].greedy, refs[1].greedy)
    with pytest.raises(KVError, match="generate_tokens=3"):
        load_reference(path, ["a", "b"], generate_tokens=4, batch_size=8, dtype="bfloat16")
    with pytest.raises(KVError, match="prompts="):
        load_reference(path, ["a", "c"], generate_tokens=3, batch_size=8, dtype="bfloat16")
    (tmp_path / "bad.safetensors").write_bytes(b"not a reference")
    with pytest.raises(KVError, match="not a readable reference"):
        load_reference(tmp_path / "bad.safetensors", ["a"], generate_tokens=3, batch_size=8, dtype="bfloat16")


def test_continuation_attention_mass_and_retention(small_model):
    """The reference run records where the continuation's queries look; retention of a pruned cache
    is the share of that mass on the kept tokens."""
    from kvwire.kv import continue_attention
    from kvwire.quality import attention_retention, reference_batch

    records = _records(small_model)
    layers = [r.layers for r in records]
    prefix = records[0].seq_len
    cont = torch.stack([r.continuation_ids for r in records])[:, :-1]
    logits, mass = continue_attention(small_model, layers, prefix, cont)
    assert torch.equal(logits, continue_logits(small_model, layers, prefix, cont))  # the forward is unchanged
    n_layers, heads = len(layers[0]), small_model.config.num_attention_heads
    assert mass.shape == (len(records), n_layers, prefix) and (mass >= 0).all()
    # every continuation query spreads probability 1 over the prefix and the continuation so far
    per_layer = mass.sum(-1)
    assert (per_layer <= cont.shape[1] * heads + 1e-3).all() and (per_layer > 0.05 * cont.shape[1] * heads).all()

    ref = reference_batch(small_model, records, steps=3)[0]
    assert torch.equal(ref.attention, mass[0])
    assert attention_retention(ref.attention, records[0].layers) == [1.0] * n_layers
    top = ref.attention.sum(0).argsort(descending=True)
    keep_best, keep_worst = top[: prefix // 2].sort().values, top[prefix // 2:].sort().values
    best = attention_retention(ref.attention, [LayerKV(l.k[:, keep_best], l.v[:, keep_best], keep_best)
                                              for l in records[0].layers])
    worst = attention_retention(ref.attention, [LayerKV(l.k[:, keep_worst], l.v[:, keep_worst], keep_worst)
                                               for l in records[0].layers])
    assert all(0 < w < b < 1 for b, w in zip(best, worst))
    assert sum(best) / n_layers > 0.5 > sum(worst) / n_layers
    for b, w in zip(best, worst):  # the two halves partition the prefix: their shares add up to one
        assert b + w == pytest.approx(1.0)
    rows = score_batch(small_model, records[:1], [records[0].layers], steps=3, references=[ref])
    assert rows[0]["attention_retention"] == 1.0 and rows[0]["attention_retention_layers"] == [1.0] * n_layers


def test_window_only_attention_statistics_equal_the_full_ones(small_model):
    from kvwire.kv import prefill_stats

    torch.manual_seed(6)
    ids = torch.randint(3, small_model.config.vocab_size, (2, 40))
    layers, first, full = prefill_stats(small_model, ids, obs_window=8)
    layers_w, first_w, window = prefill_stats(small_model, ids, obs_window=8, sums=False)
    assert torch.equal(first, first_w) and torch.equal(layers[0][1].k, layers_w[0][1].k)
    for b in range(2):
        for full_layer, window_layer in zip(full[b], window[b]):
            assert set(window_layer) == {"obs_attn"} and "attn_sum" in full_layer
            assert torch.allclose(window_layer["obs_attn"], full_layer["obs_attn"], atol=1e-6)
            assert window_layer["obs_attn"].shape[1] == 8


def test_transposed_linears_give_the_same_logits_and_greedy_tokens():
    from conftest import tiny_random_llama
    from kvwire.kv import _TransposedLinear, transpose_linears_for_cpu

    model = tiny_random_llama()
    torch.manual_seed(7)
    ids = torch.randint(3, model.config.vocab_size, (3, 20))
    layers, first = prefill(model, ids[:, :12])
    before = continue_logits(model, layers, 12, ids[:, 12:])
    gen_before = greedy_generate(model, layers, 12, first, 6)
    transpose_linears_for_cpu(model)
    assert isinstance(model.get_output_embeddings(), _TransposedLinear)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    attn = model.model.layers[0].self_attn.q_proj
    transpose_linears_for_cpu(model)  # idempotent
    assert model.model.layers[0].self_attn.q_proj is attn
    assert torch.allclose(continue_logits(model, layers, 12, ids[:, 12:]), before, atol=1e-5)
    assert torch.equal(greedy_generate(model, layers, 12, first, 6), gen_before)
