"""Tests for kvwire.prompts: dataset sources -> documents -> token-exact prompts.

Real data is the repository's data/ (WikiText-2, GSM8K and the tiny Llama's tokenizer; data/SOURCES.md).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kvwire import prompts  # noqa: E402
from kvwire.errors import PromptSourceError  # noqa: E402
from kvwire.prompts import (  # noqa: E402
    build_documents,
    min_chars_for,
    read_documents,
    select_prompts,
    uses_bos,
    write_documents,
)

from conftest import GSM8K, STORIES, WIKITEXT2  # noqa: E402

PYDOCS = {"source": "builtin:python-docs"}

# WikiText raw layout: lines start with a space, headings are " = Title = ", sections " = = x = = ".
SYNTHETIC_WIKITEXT = "\n".join([
    " ",
    " = Alpha = ",
    " ",
    " Alpha first paragraph . ",
    " ",
    " ",
    " = = Early life = = ",
    " ",
    " Alpha section text . ",
    " ",
    " = = = Deeper = = = ",
    " Deeper text . ",
    " = Beta = ",
    " ",
    " Beta text that is short . ",
    " = Gamma = ",
    " Gamma text . ",
    "",
])
ALPHA = ("= Alpha =\n\nAlpha first paragraph .\n\n= = Early life = =\n\nAlpha section text .\n\n"
         "= = = Deeper = = =\n\nDeeper text .")


def _doc_texts(rows: list[dict]) -> list[str]:
    return [r["text"] for r in sorted(rows, key=lambda r: int(r["id"].rsplit("-", 1)[1]))]


@pytest.fixture(scope="module")
def stories_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(STORIES))


# ----------------------------------------------------------------------------- builtin


def test_min_chars_for_is_conservative():
    assert min_chars_for(2112) == 8 * 2112
    with pytest.raises(ValueError):
        min_chars_for(0)


def test_builtin_python_docs_enough_long_documents():
    rows = build_documents(PYDOCS, max_docs=1000, min_chars=4000, seed=1)
    assert len(rows) >= 40
    assert all(r["n_chars"] == len(r["text"]) >= 4000 for r in rows)
    assert {r["source"] for r in rows} <= {"builtin:python-docs", "builtin:python-docs(stdlib-docstrings)"}
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(r["id"].startswith("python-docs-") for r in rows)


def test_builtin_python_docs_deterministic_per_seed():
    first = build_documents(PYDOCS, max_docs=20, min_chars=4000, seed=3)
    again = build_documents(PYDOCS, max_docs=20, min_chars=4000, seed=3)
    other = build_documents(PYDOCS, max_docs=20, min_chars=4000, seed=4)
    assert first == again
    assert [r["id"] for r in first] != [r["id"] for r in other]
    assert len(first) == 20


def test_builtin_ids_stable_across_seeds():
    by_id_a = {r["id"]: r["text"] for r in build_documents(PYDOCS, max_docs=1000, min_chars=4000, seed=1)}
    by_id_b = {r["id"]: r["text"] for r in build_documents(PYDOCS, max_docs=1000, min_chars=4000, seed=2)}
    assert by_id_a == by_id_b


def test_builtin_falls_back_to_stdlib_docstrings(monkeypatch):
    monkeypatch.setattr(prompts, "_pydoc_topics", lambda: None)
    rows = build_documents(PYDOCS, max_docs=10, min_chars=4000, seed=0)
    assert len(rows) == 10
    assert all(r["source"] == "builtin:python-docs(stdlib-docstrings)" for r in rows)
    assert all(len(r["text"]) >= 4000 for r in rows)


def test_unknown_builtin_names_the_problem():
    with pytest.raises(PromptSourceError, match="unknown builtin 'novels'"):
        build_documents({"source": "builtin:novels"}, max_docs=4, min_chars=100, seed=0)


# ----------------------------------------------------------------------------- wikitext


def test_wikitext_splits_at_top_level_headings_only(tmp_path, monkeypatch):
    (tmp_path / "wiki.raw").write_text(SYNTHETIC_WIKITEXT.replace("\n", "\r\n"), encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the current directory
    spec = {"source": "file:wiki.raw", "format": "wikitext"}
    # min_chars=1: every article is its own document.
    texts = _doc_texts(build_documents(spec, max_docs=10, min_chars=1, seed=0))
    assert texts == [
        ALPHA,
        "= Beta =\n\nBeta text that is short .",
        "= Gamma =\n\nGamma text .",
    ]


def test_wikitext_concatenates_short_articles_never_mid_article(tmp_path):
    path = tmp_path / "wiki.raw"
    path.write_text(SYNTHETIC_WIKITEXT, encoding="utf-8")
    spec = {"source": f"file:{path}", "format": "wikitext"}
    rows = build_documents(spec, max_docs=10, min_chars=len(ALPHA) + 5, seed=0)
    # Alpha alone is too short, Alpha+Beta is enough; Gamma alone is a too-short tail and is dropped.
    assert len(rows) == 1
    assert rows[0]["text"].startswith("= Alpha =") and rows[0]["text"].endswith("Beta text that is short .")
    assert rows[0]["id"].endswith("-0") and rows[0]["source"] == spec["source"]


def test_wikitext2_real_file():
    spec = {"source": f"file:{WIKITEXT2}", "format": "wikitext"}
    min_chars = min_chars_for(2048 + 64)
    rows = build_documents(spec, max_docs=1000, min_chars=min_chars, seed=0)
    assert len(rows) >= 30
    for row in rows:
        assert row["n_chars"] >= min_chars
        assert row["text"].startswith("= ") and not row["text"].startswith("= =")  # starts an article
        assert "\r" not in row["text"] and "\n\n\n" not in row["text"]


# ----------------------------------------------------------------------------- gsm8k / text / jsonl


def _gsm8k_row(i: int) -> dict:
    return {"question": f"What is {i} plus {i}?", "answer": f"{i}+{i}={2 * i}\n#### {2 * i}"}


def _write_gsm8k(path: Path, n: int) -> None:
    path.write_text("".join(json.dumps(_gsm8k_row(i)) + "\n" for i in range(n)), encoding="utf-8")


def test_gsm8k_concatenates_problems_few_shot_style(tmp_path):
    path = tmp_path / "gsm.jsonl"
    _write_gsm8k(path, 7)
    shots = ["Question: {question}\nAnswer: {answer}\n\n".format(**_gsm8k_row(i)) for i in range(7)]
    assert shots[0] == "Question: What is 0 plus 0?\nAnswer: 0+0=0\n#### 0\n\n"
    rows = build_documents({"source": f"file:{path}", "format": "gsm8k"}, max_docs=10,
                           min_chars=len(shots[0]) * 2 + 1, seed=0)
    texts = _doc_texts(rows)
    assert texts == ["".join(shots[0:3]), "".join(shots[3:6])]  # 3 problems each; the 7th is a short tail
    assert all(t.count("Question: ") == 3 for t in texts)


def test_gsm8k_real_file():
    min_chars = min_chars_for(2048 + 64)
    rows = build_documents({"source": f"file:{GSM8K}", "format": "gsm8k"}, max_docs=1000,
                           min_chars=min_chars, seed=0)
    assert len(rows) >= 30 and all(r["n_chars"] >= min_chars for r in rows)
    assert all(r["text"].startswith("Question: ") for r in rows)


def test_text_format_paragraphs(tmp_path):
    path = tmp_path / "plain.txt"
    path.write_text("para one\nstill one\n\n\n  \npara two\n\npara three\n", encoding="utf-8")
    texts = _doc_texts(build_documents({"source": f"file:{path}", "format": "text"}, max_docs=5,
                                       min_chars=15, seed=0))
    assert texts == ["para one\nstill one", "para two\n\npara three"]


def test_jsonl_format_field(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": f"row {i} " * 3, "n": i}) + "\n" for i in range(4)), encoding="utf-8")
    rows = build_documents({"source": f"file:{path}", "format": "jsonl", "field": "text"}, max_docs=5,
                           min_chars=20, seed=0)
    assert _doc_texts(rows) == ["row 0 row 0 row 0\n\nrow 1 row 1 row 1", "row 2 row 2 row 2\n\nrow 3 row 3 row 3"]


def test_max_docs_caps_and_seed_shuffles(tmp_path):
    path = tmp_path / "plain.txt"
    path.write_text("\n\n".join(f"paragraph number {i}" for i in range(50)), encoding="utf-8")
    spec = {"source": f"file:{path}", "format": "text"}
    rows = build_documents(spec, max_docs=10, min_chars=5, seed=0)
    assert len(rows) == 10
    assert [r["id"] for r in rows] != [f"{rows[0]['id'].rsplit('-', 1)[0]}-{i}" for i in range(10)]


# ----------------------------------------------------------------------------- hf (network-free)


def _fake_datasets(rows: list[dict], calls: list) -> types.ModuleType:
    module = types.ModuleType("datasets")

    def load_dataset(path, name=None, *, split, streaming=False):
        calls.append((path, name, split, streaming))
        return list(rows)

    module.load_dataset = load_dataset
    return module


def test_hf_source_parsing_and_formats(monkeypatch):
    calls: list = []
    lines = [{"text": line} for line in (" = A =\n", " a text .\n", " = = S = =\n", " = B =\n", " b .\n")]
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(lines, calls))
    spec = {"source": "hf:Salesforce/wikitext:wikitext-103-raw-v1:test", "format": "wikitext"}
    rows = build_documents(spec, max_docs=5, min_chars=1, seed=0)
    assert _doc_texts(rows) == ["= A =\n\na text .\n\n= = S = =", "= B =\n\nb ."]
    assert rows[0]["id"].startswith("wikitext-wikitext-103-raw-v1-test-")
    assert calls == [("Salesforce/wikitext", "wikitext-103-raw-v1", "test", False)]

    calls.clear()
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets([{"text": "x" * 30}] * 3, calls))
    spec = {"source": "hf:allenai/c4:en:validation", "format": "jsonl", "field": "text"}
    assert len(build_documents(spec, max_docs=5, min_chars=30, seed=0)) == 3
    assert calls == [("allenai/c4", "en", "validation", True)]  # c4 streams by default


def test_hf_offline_without_cache_names_the_problem(tmp_path):
    # A fresh interpreter, so that HF_HUB_OFFLINE is read at import time whatever this process did.
    code = (
        "from kvwire.prompts import build_documents\n"
        "from kvwire.errors import PromptSourceError\n"
        "try:\n"
        "    build_documents({'source': 'hf:openai/gsm8k:main:test', 'format': 'gsm8k'},"
        " max_docs=2, min_chars=100, seed=0)\n"
        "except PromptSourceError as exc:\n"
        "    print('ERROR:', exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "ERROR:" in done.stdout, done.stdout + done.stderr
    assert "'hf:openai/gsm8k:main:test'" in done.stdout and "HF_HUB_OFFLINE" in done.stdout


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"source": "ftp:x"}, "unknown source scheme 'ftp'"),
        ({"source": "no-scheme"}, "expected 'builtin:', 'file:' or 'hf:'"),
        ({"source": "file:x.txt", "format": "pdf"}, "unknown or missing format 'pdf'"),
        ({"source": "file:x.txt"}, "unknown or missing format None"),
        ({"source": "file:x.jsonl", "format": "jsonl"}, "needs a 'field'"),
        ({"source": "file:does/not/exist.raw", "format": "wikitext"}, "does not exist"),
        ({"source": "hf:only-path", "format": "gsm8k"}, "expected 'hf:PATH:NAME:SPLIT'"),
        ({"format": "text"}, "no 'source'"),
    ],
)
def test_spec_errors_name_the_problem(spec, message):
    with pytest.raises(PromptSourceError, match=re.escape(message)) as info:
        build_documents(spec, max_docs=2, min_chars=10, seed=0)
    if "source" in spec:
        assert repr(spec["source"]) in str(info.value)


def test_missing_field_and_bad_rows_name_the_problem(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"body": "hello"}\n', encoding="utf-8")
    with pytest.raises(PromptSourceError, match="row 0 has no field 'text'"):
        build_documents({"source": f"file:{path}", "format": "jsonl", "field": "text"}, max_docs=2, min_chars=1, seed=0)
    with pytest.raises(PromptSourceError, match="lacks string 'question' and 'answer'"):
        build_documents({"source": f"file:{path}", "format": "gsm8k"}, max_docs=2, min_chars=1, seed=0)
    path.write_text("not json\n", encoding="utf-8")
    with pytest.raises(PromptSourceError, match="line 1 is not JSON"):
        build_documents({"source": f"file:{path}", "format": "jsonl", "field": "text"}, max_docs=2, min_chars=1, seed=0)


def test_too_short_source_names_the_problem(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("tiny\n\ntext\n", encoding="utf-8")
    with pytest.raises(PromptSourceError, match=r"no document of >= 1000 chars"):
        build_documents({"source": f"file:{path}", "format": "text"}, max_docs=2, min_chars=1000, seed=0)


def test_documents_round_trip(tmp_path):
    rows = build_documents(PYDOCS, max_docs=3, min_chars=2000, seed=0)
    write_documents(tmp_path / "p" / "pydocs.jsonl", rows)
    assert read_documents(tmp_path / "p" / "pydocs.jsonl") == rows
    with pytest.raises(PromptSourceError, match="does not exist"):
        read_documents(tmp_path / "missing.jsonl")


# ----------------------------------------------------------------------------- select_prompts


def test_select_prompts_exact_lengths_and_doc_start(stories_tokenizer):
    tok = stories_tokenizer
    docs = build_documents(PYDOCS, max_docs=8, min_chars=min_chars_for(256 + 32), seed=0)
    selected = select_prompts(docs, tok, prefix_tokens=256, continuation_tokens=32, count=4)
    assert [s["prompt_id"] for s in selected] == [d["id"] for d in docs[:4]]
    for sel, doc in zip(selected, docs[:4], strict=True):
        assert len(sel["prefix_ids"]) == 256 and len(sel["continuation_ids"]) == 32
        # The tokenizer's own default (BOS for this Llama) + text tokens, cut after 288 ids.
        assert sel["prefix_ids"] + sel["continuation_ids"] == tok(doc["text"])["input_ids"][:288]
        assert sel["prefix_ids"][0] == tok.bos_token_id


def test_select_prompts_bos_explicit(stories_tokenizer):
    tok = stories_tokenizer
    assert uses_bos(tok) is True  # add_bos_token: true in its tokenizer_config
    docs = build_documents(PYDOCS, max_docs=2, min_chars=2000, seed=0)
    without = select_prompts(docs, tok, prefix_tokens=64, continuation_tokens=8, count=1, add_bos=False)
    with_bos = select_prompts(docs, tok, prefix_tokens=64, continuation_tokens=8, count=1, add_bos=True)
    plain = tok(docs[0]["text"], add_special_tokens=False)["input_ids"]
    assert without[0]["prefix_ids"] + without[0]["continuation_ids"] == plain[:72]
    assert with_bos[0]["prefix_ids"] == [tok.bos_token_id] + plain[:63]
    assert with_bos[0]["continuation_ids"] == plain[63:71]


def test_select_prompts_bos_follows_tokenizer_default():
    class NoBosTokenizer:  # like SmolLM2: has a bos_token but does not add it by default
        bos_token, bos_token_id = "<s>", 0

        def __call__(self, text, add_special_tokens=True, verbose=True):
            return {"input_ids": [ord(c) for c in text]}

    docs = [{"id": "d-0", "text": "abcdefgh", "source": "x"}]
    sel = select_prompts(docs, NoBosTokenizer(), prefix_tokens=3, continuation_tokens=2, count=1)
    assert sel == [{"prompt_id": "d-0", "prefix_ids": [97, 98, 99], "continuation_ids": [100, 101]}]
    sel = select_prompts(docs, NoBosTokenizer(), prefix_tokens=3, continuation_tokens=2, count=1, add_bos=True)
    assert sel[0]["prefix_ids"] == [0, 97, 98]

    NoBosTokenizer.bos_token = NoBosTokenizer.bos_token_id = None
    with pytest.raises(PromptSourceError, match="has no bos_token"):
        select_prompts(docs, NoBosTokenizer(), prefix_tokens=3, continuation_tokens=2, count=1, add_bos=True)


def test_select_prompts_too_few_names_dataset_and_bin(stories_tokenizer):
    docs = build_documents(PYDOCS, max_docs=3, min_chars=2000, seed=0)
    with pytest.raises(PromptSourceError) as info:
        select_prompts(docs, stories_tokenizer, prefix_tokens=100_000, continuation_tokens=64, count=2)
    message = str(info.value)
    assert "'builtin:python-docs'" in message and "bin 100000" in message and "only 0 of 3" in message


# ----------------------------------------------------------------------------- pinned sources


def test_a_pinned_file_is_read_only_with_its_checksum(tmp_path):
    import hashlib

    path = tmp_path / "plain.txt"
    path.write_text("para one\n\npara two\n", encoding="utf-8")
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = {"source": f"file:{path}", "format": "text", "sha256": good}
    assert len(build_documents(spec, max_docs=5, min_chars=5, seed=0)) == 2
    path.write_text("para one\n\npara 2\n", encoding="utf-8")  # one character changed
    with pytest.raises(PromptSourceError, match=f"sha256 of .* is [0-9a-f]{{64}}, the config pins {good}"):
        build_documents(spec, max_docs=5, min_chars=5, seed=0)
    with pytest.raises(PromptSourceError, match="not 64 lowercase hex"):
        build_documents(dict(spec, sha256="ABC"), max_docs=5, min_chars=5, seed=0)


def test_the_default_study_reads_its_pinned_copies(repo):
    """config/config.yaml's datasets are the carried files, pinned by the hashes data/SOURCES.md lists."""
    import hashlib

    import yaml

    cfg = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    sources = (repo / "data" / "SOURCES.md").read_text()
    for name, spec in cfg["datasets"].items():
        assert isinstance(spec["source"], str) and spec["source"].startswith("file:data/"), name
        path = repo / spec["source"].removeprefix("file:")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == spec["sha256"], name
        assert spec["sha256"] in sources, name
        assert (path.parent / "LICENSE").is_file(), name


# ----------------------------------------------------------------------------- independent documents per bin

WIKI_SPEC = {"source": f"file:{WIKITEXT2}", "format": "wikitext"}
GSM_SPEC = {"source": f"file:{GSM8K}", "format": "gsm8k"}
NEEDS = {b: b + 64 for b in (256, 512, 1024, 2048)}


@pytest.mark.parametrize("spec", [WIKI_SPEC, GSM_SPEC], ids=["wikitext2", "gsm8k"])
def test_bin_documents_share_no_unit(spec):
    from kvwire.prompts import build_bin_documents

    rows = build_bin_documents(spec, needs=NEEDS, per_bin=13, seed=7, chars_per_token=6)  # config/full.yaml's
    assert sorted({r["bin"] for r in rows}) == sorted(NEEDS)
    units = [u for r in rows for u in r["units"]]
    assert len(units) == len(set(units)), "a unit (article, problem) is in two documents"
    texts = [r["text"] for r in rows]
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:  # a document is long enough for its bin, and no prompt's text is inside another's
        assert r["n_chars"] == len(r["text"]) >= 6 * NEEDS[r["bin"]]
    smallest = [r["text"][:300] for r in rows if r["bin"] == 256]
    assert not any(head in other for head in smallest for other in texts if not other.startswith(head))
    assert sum(1 for r in rows if r["bin"] == 2048) == 13 + max(2, 13 // 5)


def test_bin_documents_keep_long_articles_whole_and_are_seeded():
    from kvwire.prompts import _units_for, build_bin_documents

    units = [u for u in _units_for(WIKI_SPEC)[0] if u]
    rows = build_bin_documents(WIKI_SPEC, needs=NEEDS, per_bin=4, seed=1)
    for r in rows:
        if len(r["units"]) == 1:  # a whole article, exactly
            assert r["text"] == units[r["units"][0]]
        else:  # joined only because no unused article was long enough alone
            assert all(len(units[u]) < 8 * NEEDS[r["bin"]] for u in r["units"])
    assert build_bin_documents(WIKI_SPEC, needs=NEEDS, per_bin=4, seed=1) == rows
    assert build_bin_documents(WIKI_SPEC, needs=NEEDS, per_bin=4, seed=2) != rows


def test_bin_documents_for_a_short_bin_use_whole_articles_until_enough():
    # long articles exceed a 128-token bin's budget many times over: reading a pool by characters
    # alone stopped after 4 articles (smoke config: 4 + 2 documents of one bin)
    from kvwire.prompts import build_bin_documents

    rows = build_bin_documents(WIKI_SPEC, needs={128: 160}, per_bin=4, seed=7)
    assert len(rows) == 6 and all(len(r["units"]) == 1 for r in rows)


def test_bin_documents_run_out_with_a_clear_error():
    from kvwire.prompts import build_bin_documents

    with pytest.raises(PromptSourceError, match=r"bin 2048 needs 40\+8 documents .* only \d+ could be made"):
        build_bin_documents(WIKI_SPEC, needs=NEEDS, per_bin=40, seed=0)


def test_select_prompts_reads_only_its_bins_documents(stories_tokenizer):
    from kvwire.prompts import build_bin_documents

    rows = build_bin_documents(GSM_SPEC, needs={64: 72, 128: 136}, per_bin=3, seed=0)
    small = select_prompts(rows, stories_tokenizer, prefix_tokens=64, continuation_tokens=8, count=3)
    large = select_prompts(rows, stories_tokenizer, prefix_tokens=128, continuation_tokens=8, count=3)
    by_id = {r["id"]: r for r in rows}
    assert {by_id[p["prompt_id"]]["bin"] for p in small} == {64}
    assert {by_id[p["prompt_id"]]["bin"] for p in large} == {128}
    with pytest.raises(PromptSourceError, match=r"made for bins \[64, 128\], not 256 .* rebuild"):
        select_prompts(rows, stories_tokenizer, prefix_tokens=256, continuation_tokens=8, count=1)
