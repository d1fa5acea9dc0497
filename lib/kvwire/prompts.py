"""Prompt sources: dataset text -> documents -> token-exact prefix/continuation prompts.

Two steps, so that the model-independent part is computed once per dataset:

1. :func:`build_bin_documents` turns one ``datasets:`` entry of the config into text documents for
   each length bin, never cut mid-unit (article, problem, paragraph, topic), and no unit in two
   documents: every prompt of a (dataset, model) cell is a different document, so the prompts are
   independent samples (the 256-token prompt is not the start of the 2048-token one). Every model
   reads the same documents, so codecs and models are compared on the same text.
   :func:`build_documents` is the one-bin form (documents of at least ``min_chars``), used by the
   offload traces. Deterministic: ``random.Random(seed)`` orders documents or units.
2. :func:`select_prompts` tokenizes one bin's documents with one model's tokenizer and cuts exactly
   ``prefix_tokens`` prefix ids (BOS included when used) and ``continuation_tokens`` ids after them.

Sources (``spec["source"]``): ``builtin:python-docs`` (CPython's bundled reference docs, works on any
offline machine), ``file:PATH`` (relative to the current working directory; ``spec["sha256"]`` pins its bytes) and
``hf:PATH[:NAME]:SPLIT`` (``datasets.load_dataset``). Formats (``spec["format"]``): ``wikitext``,
``gsm8k``, ``text``, ``jsonl`` (with ``spec["field"]``).
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import math
import os
import random
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from kvwire.errors import PromptSourceError
from kvwire.io import read_jsonl, write_jsonl

# Conservative: real tokenizers average 1.4-5 chars per token on English/code, so a document of
# 8 chars per wanted token almost always has enough tokens; select_prompts checks exactly anyway.
CHARS_PER_TOKEN = 8

# Only the first POOL_FACTOR * max_docs documents in source order are shuffled; this bounds what
# is read from streamed corpora (c4) while keeping every finite test/benchmark file whole in practice.
POOL_FACTOR = 8

FORMATS = ("wikitext", "gsm8k", "text", "jsonl")
BUILTINS = ("python-docs",)
UNIT_SEPARATOR = "\n\n"

# Corpora too large to download whole: read them with streaming=True unless the spec says otherwise.
STREAMED_HF_DATASETS = frozenset({"allenai/c4", "c4"})

# Fallback for Pythons without pydoc_data: docstrings of these stdlib modules (fixed order).
STDLIB_DOC_MODULES = (
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "calendar", "cmath", "codecs",
    "collections", "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "dis", "email", "enum", "fractions", "functools", "gettext",
    "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http.client", "importlib", "inspect", "io",
    "ipaddress", "itertools", "json", "locale", "logging", "lzma", "math", "mimetypes", "operator",
    "optparse", "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "secrets", "selectors",
    "shlex", "shutil", "signal", "socket", "statistics", "string", "struct", "subprocess",
    "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "traceback", "types",
    "typing", "unittest", "urllib.parse", "uuid", "warnings", "weakref", "xml.etree.ElementTree",
    "zipfile", "zlib",
)


# ----------------------------------------------------------------------------- public API


def min_chars_for(tokens: int) -> int:
    """A conservative character budget for a document that must hold ``tokens`` tokens."""
    if tokens <= 0:
        raise ValueError(f"min_chars_for needs a positive token count, got {tokens}")
    return CHARS_PER_TOKEN * int(tokens)


def build_documents(spec: dict, *, max_docs: int, min_chars: int, seed: int) -> list[dict]:
    """Turn one dataset spec into at most ``max_docs`` documents of at least ``min_chars`` chars.

    Rows: ``{"id": "<slug>-<n>", "text", "source", "n_chars"}``; ``n`` is the document's index in
    source order, so a document keeps its id whatever the seed. Raises PromptSourceError when the
    source cannot be read or yields no document of ``min_chars``.
    """
    if max_docs <= 0 or min_chars <= 0:
        raise ValueError(f"max_docs and min_chars must be positive, got {max_docs}, {min_chars}")
    sources = spec.get("source") if isinstance(spec, dict) else None
    if isinstance(sources, list) and sources and all(isinstance(x, str) for x in sources):
        return _first_readable(spec, sources, max_docs=max_docs, min_chars=min_chars, seed=seed)
    if not isinstance(sources, str):
        raise PromptSourceError(f"dataset spec {spec!r} has no 'source' string (or list of strings)")
    source = spec["source"]
    units, row_source = _units_for(spec)
    separator = _unit_separator(spec)
    pool_size = POOL_FACTOR * max_docs
    texts = list(itertools.islice(_group_units(units, min_chars, separator), pool_size))
    if not texts:
        raise PromptSourceError(
            f"dataset {source!r}: no document of >= {min_chars} chars "
            f"(the whole source is shorter; choose a smaller bin or a larger source)"
        )
    slug = _dataset_slug(spec)
    indexed = list(enumerate(texts))
    random.Random(seed).shuffle(indexed)
    return [
        {"id": f"{slug}-{n}", "text": text, "source": row_source, "n_chars": len(text)}
        for n, text in indexed[:max_docs]
    ]


def build_bin_documents(spec: dict, *, needs: dict[int, int], per_bin: int, seed: int,
                        spare: int | None = None, chars_per_token: float = CHARS_PER_TOKEN) -> list[dict]:
    """Disjoint documents for every length bin: ``per_bin + spare`` per bin, no unit used twice.

    ``needs`` maps each bin (its prefix tokens) to the tokens a document must hold (prefix plus
    continuation); a document gets at least ``chars_per_token`` characters per needed token. Bins are
    served largest first; for each document the first unused unit (in seeded random order) that is
    long enough on its own is taken whole (a WikiText article stays one article), else unused units
    are joined in that order until the document is long enough (GSM8K problems, short articles).
    ``spare`` documents per bin stand in when a tokenizer packs more characters per token than
    assumed (default ``max(2, per_bin // 5)``); :func:`select_prompts` skips documents that are
    too short and errors if fewer than ``per_bin`` remain.

    Rows: ``{"id": "<slug>-<n>", "bin", "text", "source", "n_chars", "units"}``; ``n`` is the
    source-order index of the document's first unit (unique, as no unit is used twice) and
    ``units`` lists every unit's index. Raises PromptSourceError naming the bin when the source runs out.
    """
    if per_bin <= 0 or not needs or any(int(b) <= 0 or int(n) < int(b) for b, n in needs.items()):
        raise ValueError(f"need per_bin > 0 and needs {{bin: tokens >= bin}}, got {per_bin}, {needs}")
    if not 1.0 <= float(chars_per_token) <= 64.0:
        raise PromptSourceError(f"chars_per_token must be in [1, 64], got {chars_per_token!r}")
    spare = max(2, per_bin // 5) if spare is None else int(spare)
    sources = spec.get("source") if isinstance(spec, dict) else None
    kw = dict(needs=needs, per_bin=per_bin, seed=seed, spare=spare, chars_per_token=chars_per_token)
    if isinstance(sources, list) and sources and all(isinstance(x, str) for x in sources):
        return _first_readable(spec, sources, build=build_bin_documents, **kw)
    if not isinstance(sources, str):
        raise PromptSourceError(f"dataset spec {spec!r} has no 'source' string (or list of strings)")
    wanted = {int(b): int(math.ceil(chars_per_token * int(n))) for b, n in needs.items()}
    budget = (per_bin + spare) * sum(wanted.values())
    n_docs = (per_bin + spare) * len(wanted)
    units_iter, row_source = _units_for(spec)
    units: list[str] = []
    total = 0
    for unit in units_iter:  # bounded: streamed corpora (c4) are read only as far as the budget needs
        if unit:
            units.append(unit)
            total += len(unit)
            # both bounds: a whole long article serves one document, however many chars it holds
            if total >= POOL_FACTOR * budget and len(units) >= POOL_FACTOR * n_docs:
                break
    order = list(range(len(units)))
    random.Random(seed).shuffle(order)
    used = [False] * len(units)
    separator = _unit_separator(spec)
    slug = _dataset_slug(spec)
    rows: list[dict] = []
    for bin_tokens in sorted(wanted, reverse=True):
        min_chars = wanted[bin_tokens]
        for k in range(per_bin + spare):
            parts = _take_units(units, order, used, min_chars)
            if parts is None:
                have = sum(len(units[i]) for i in range(len(units)) if not used[i])
                raise PromptSourceError(
                    f"dataset {spec['source']!r}: bin {bin_tokens} needs {per_bin}+{spare} documents of "
                    f">= {min_chars} chars ({chars_per_token} per token) from units no other prompt uses; "
                    f"only {k} could be made ({have} unused chars left): lower per_bin or the largest bin, "
                    f"lower prompts.chars_per_token, or use a longer source"
                )
            rows.append({"id": f"{slug}-{min(parts)}", "bin": bin_tokens,
                         "text": separator.join(units[i] for i in parts), "source": row_source,
                         "n_chars": sum(len(units[i]) for i in parts) + len(separator) * (len(parts) - 1),
                         "units": sorted(parts)})
    return rows


def _take_units(units: list[str], order: list[int], used: list[bool], min_chars: int) -> list[int] | None:
    """Mark and return the units of one document of >= min_chars: one whole unit if any is long
    enough, else unused units joined in ``order``; None when the unused units are too short in all."""
    for i in order:
        if not used[i] and len(units[i]) >= min_chars:
            used[i] = True
            return [i]
    parts, size = [], 0
    for i in order:
        if not used[i]:
            parts.append(i)
            size += len(units[i])
            if size >= min_chars:
                for j in parts:
                    used[j] = True
                return parts
    return None


def _first_readable(spec: dict, sources: list[str], build=None, **kw) -> list[dict]:
    """Documents from the first of ``sources`` that can be read (a local copy, then the hub, say);
    if none can, one error that gives every source's reason."""
    build = build or build_documents
    reasons = []
    for source in sources:
        try:
            return build(dict(spec, source=source), **kw)
        except PromptSourceError as exc:
            reasons.append(f"  {source}: {exc}")
    raise PromptSourceError("no source of this dataset could be read:\n" + "\n".join(reasons))


def write_documents(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write document rows as JSON lines, atomically."""
    write_jsonl(path, rows)


def read_documents(path: str | os.PathLike) -> list[dict]:
    """Read document rows written by :func:`write_documents`, checking the keys later steps use."""
    try:
        rows = read_jsonl(path)
    except FileNotFoundError:
        raise PromptSourceError(f"documents file {str(path)!r} does not exist") from None
    except json.JSONDecodeError as exc:
        raise PromptSourceError(f"documents file {str(path)!r} is not valid JSON lines: {exc}") from None
    for i, row in enumerate(rows):
        if not isinstance(row.get("id"), str) or not isinstance(row.get("text"), str):
            raise PromptSourceError(f"documents file {str(path)!r}: row {i} lacks a string 'id' or 'text'")
    return rows


def select_prompts(
    docs: list[dict],
    tokenizer,
    *,
    prefix_tokens: int,
    continuation_tokens: int,
    count: int,
    add_bos: bool | None = None,
) -> list[dict]:
    """Cut ``count`` prompts of exactly ``prefix_tokens`` + ``continuation_tokens`` ids.

    Takes the first ``count`` documents (in the given order) whose token count reaches the total;
    documents made for bins (rows with a ``bin``, :func:`build_bin_documents`) are taken from this
    bin's only, so no two prompts of a study share text. Text is always tokenized without special
    tokens; BOS is then prepended explicitly when :func:`uses_bos` says so, and counts towards
    ``prefix_tokens``.
    """
    if prefix_tokens <= 0 or continuation_tokens < 0 or count < 0:
        raise ValueError(
            f"need prefix_tokens > 0, continuation_tokens >= 0, count >= 0; "
            f"got {prefix_tokens}, {continuation_tokens}, {count}"
        )
    bos_ids = [tokenizer.bos_token_id] if uses_bos(tokenizer, add_bos) else []
    needed = prefix_tokens + continuation_tokens
    if any("bin" in doc for doc in docs):
        binned = [doc for doc in docs if doc.get("bin") == prefix_tokens]
        if not binned:
            bins = sorted({doc.get("bin") for doc in docs if "bin" in doc})
            raise PromptSourceError(
                f"dataset {_docs_dataset(docs)}: the documents were made for bins {bins}, not {prefix_tokens} "
                f"(the config's bins changed: rebuild them, rule build_prompts)"
            )
        docs = binned
    prompts: list[dict] = []
    for doc in docs:
        if len(prompts) == count:
            break
        ids = bos_ids + _encode(tokenizer, doc["text"])
        if len(ids) < needed:
            continue
        prompts.append({
            "prompt_id": doc["id"],
            "prefix_ids": ids[:prefix_tokens],
            "continuation_ids": ids[prefix_tokens:needed],
        })
    if len(prompts) < count:
        raise PromptSourceError(
            f"dataset {_docs_dataset(docs)}: bin {prefix_tokens} needs {count} documents of >= "
            f"{prefix_tokens}+{continuation_tokens}={needed} tokens, only {len(prompts)} of "
            f"{len(docs)} qualify (lower per_bin or prompts.chars_per_token, or use a longer source)"
        )
    return prompts


def uses_bos(tokenizer, add_bos: bool | None = None) -> bool:
    """Whether prompts start with BOS: ``add_bos`` if given, else what the tokenizer itself does.

    A tokenizer without a bos_token never gets one; asking for it explicitly is an error.
    """
    bos_id = getattr(tokenizer, "bos_token_id", None)
    has_bos = getattr(tokenizer, "bos_token", None) is not None and bos_id is not None
    if add_bos is None:
        return has_bos and _tokenizer_adds_bos(tokenizer, bos_id)
    if add_bos and not has_bos:
        raise PromptSourceError(f"add_bos=True but tokenizer {type(tokenizer).__name__} has no bos_token")
    return bool(add_bos)


# ----------------------------------------------------------------------------- tokenization


def _encode(tokenizer, text: str) -> list[int]:
    # verbose=False: whole documents exceed model_max_length on purpose; we cut ids afterwards.
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _tokenizer_adds_bos(tokenizer, bos_id: int) -> bool:
    """Probe the tokenizer's default add_special_tokens behaviour on a short text."""
    probe = "Hello"
    with_special = list(tokenizer(probe, verbose=False)["input_ids"])
    without = _encode(tokenizer, probe)
    return with_special[:1] == [bos_id] and without[:1] != [bos_id]


def _docs_dataset(docs: list[dict]) -> str:
    if not docs:
        return "(no documents)"
    first = docs[0]
    return f"{first.get('source', '?')!r} (ids like {first.get('id', '?')!r})"


# ----------------------------------------------------------------------------- grouping


def _group_units(units: Iterable[str], min_chars: int, separator: str = UNIT_SEPARATOR) -> Iterator[str]:
    """Concatenate consecutive units until each document has >= min_chars; drop the short tail."""
    parts: list[str] = []
    size = 0
    for unit in units:
        if not unit:
            continue
        size += len(unit) + (len(separator) if parts else 0)
        parts.append(unit)
        if size >= min_chars:
            yield separator.join(parts)
            parts, size = [], 0


def _unit_separator(spec: dict) -> str:
    # GSM8K units carry their own blank-line terminator ("...\n\n"), so they join with nothing.
    is_gsm8k = spec.get("format") == "gsm8k" and not spec["source"].startswith("builtin:")
    return "" if is_gsm8k else UNIT_SEPARATOR


def _dataset_slug(spec: dict) -> str:
    """A short, filesystem-safe dataset label for document ids."""
    scheme, _, rest = spec["source"].partition(":")
    if scheme == "file":
        file = Path(rest)  # parent folder + stem: "gsm8k/test.jsonl" -> "gsm8k-test"
        label = f"{file.parent.name}-{file.stem}" if file.parent.name else file.stem
    elif scheme == "hf":
        hf_path, name, split = _parse_hf(spec["source"])
        label = "-".join(p for p in (hf_path.rsplit("/", 1)[-1], name, split) if p)
    else:
        label = rest
    return re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-").lower() or "doc"


# ----------------------------------------------------------------------------- sources


def _units_for(spec: dict) -> tuple[Iterator[str], str]:
    """(text units in source order, the row 'source' label)."""
    source = spec["source"]
    scheme, sep, rest = source.partition(":")
    if not sep or not rest:
        raise PromptSourceError(f"dataset {source!r}: expected 'builtin:', 'file:' or 'hf:' source")
    if scheme == "builtin":
        return _builtin_units(source, rest)
    if scheme == "file":
        return _file_units(spec, _format_of(spec), Path(rest)), source
    if scheme == "hf":
        return _hf_units(spec, _format_of(spec)), source
    raise PromptSourceError(
        f"dataset {source!r}: unknown source scheme {scheme!r} (known: builtin, file, hf)"
    )


def _format_of(spec: dict) -> str:
    fmt = spec.get("format")
    if fmt not in FORMATS:
        raise PromptSourceError(
            f"dataset {spec['source']!r}: unknown or missing format {fmt!r} (known: {', '.join(FORMATS)})"
        )
    if fmt == "jsonl" and not isinstance(spec.get("field"), str):
        raise PromptSourceError(f"dataset {spec['source']!r}: format 'jsonl' needs a 'field' name")
    return fmt


def _file_units(spec: dict, fmt: str, path: Path) -> Iterator[str]:
    source = spec["source"]
    if not path.is_file():
        raise PromptSourceError(
            f"dataset {source!r}: file {str(path.absolute())!r} does not exist "
            f"(relative paths resolve against the current directory {os.getcwd()!r})"
        )
    if spec.get("sha256") is not None:
        _check_sha256(source, path, spec["sha256"])
    if fmt == "wikitext":
        return _wikitext_articles(_read_text(source, path).splitlines())
    if fmt == "text":
        return _paragraphs(_read_text(source, path))
    rows = _read_jsonl_rows(source, path)
    if fmt == "gsm8k":
        return _gsm8k_problems(source, rows)
    return _field_values(source, rows, spec["field"])


def _check_sha256(source: str, path: Path, expected: str) -> None:
    """A pinned source must be the very bytes the study was run on (a re-encoded or truncated copy
    changes documents, prompts and every table silently)."""
    if not isinstance(expected, str) or not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise PromptSourceError(f"dataset {source!r}: sha256 {expected!r} is not 64 lowercase hex digits")
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise PromptSourceError(f"dataset {source!r}: cannot read {str(path)!r}: {exc}") from None
    if digest.hexdigest() != expected:
        raise PromptSourceError(
            f"dataset {source!r}: sha256 of {str(path)!r} is {digest.hexdigest()}, the config pins {expected} "
            f"(a changed copy: restore it, e.g. `git checkout -- {path.name}`, or update the pin)"
        )


def _read_text(source: str, path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")  # universal newlines: the shared WikiText has CRLF
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptSourceError(f"dataset {source!r}: cannot read {str(path)!r}: {exc}") from None


def _read_jsonl_rows(source: str, path: Path) -> Iterator[dict]:
    for lineno, line in enumerate(_read_text(source, path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptSourceError(f"dataset {source!r}: line {lineno} is not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise PromptSourceError(f"dataset {source!r}: line {lineno} is not a JSON object")
        yield row


def _hf_units(spec: dict, fmt: str) -> Iterator[str]:
    source = spec["source"]
    path, name, split = _parse_hf(source)
    if fmt == "text":
        raise PromptSourceError(
            f"dataset {source!r}: format 'text' is for files; use 'jsonl' with a 'field' for hf: sources"
        )
    streaming = bool(spec.get("streaming", path in STREAMED_HF_DATASETS))
    rows = _load_hf_rows(source, path, name, split, streaming)
    if fmt == "wikitext":
        field = spec.get("field", "text")
        return _wikitext_articles(line for row in _field_values(source, rows, field) for line in row.splitlines())
    if fmt == "gsm8k":
        return _gsm8k_problems(source, rows)
    return _field_values(source, rows, spec["field"])


def _parse_hf(source: str) -> tuple[str, str | None, str]:
    """``hf:PATH:NAME:SPLIT`` or ``hf:PATH:SPLIT`` -> (path, name or None, split)."""
    parts = source.split(":")[1:]
    if len(parts) == 3 and all(parts[::2]):
        return parts[0], parts[1] or None, parts[2]
    if len(parts) == 2 and all(parts):
        return parts[0], None, parts[1]
    raise PromptSourceError(f"dataset {source!r}: expected 'hf:PATH:NAME:SPLIT' or 'hf:PATH:SPLIT'")


def _load_hf_rows(source: str, path: str, name: str | None, split: str, streaming: bool) -> Iterator[dict]:
    try:
        import datasets
    except ImportError:
        raise PromptSourceError(f"dataset {source!r}: the 'datasets' package is not installed") from None
    try:
        data = datasets.load_dataset(path, name, split=split, streaming=streaming)
        # Fetch the first row now so that offline/missing errors surface here, not mid-grouping.
        rows = iter(data)
        first = next(rows, None)
    except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        hint = " HF_HUB_OFFLINE is set and the dataset is not in the local cache." if offline else ""
        raise PromptSourceError(
            f"dataset {source!r}: datasets.load_dataset({path!r}, {name!r}, split={split!r}) "
            f"failed: {type(exc).__name__}: {exc}.{hint}"
        ) from exc
    return itertools.chain([] if first is None else [first], rows)


def _builtin_units(source: str, name: str) -> tuple[Iterator[str], str]:
    if name != "python-docs":
        raise PromptSourceError(f"dataset {source!r}: unknown builtin {name!r} (known: {', '.join(BUILTINS)})")
    topics = _pydoc_topics()
    if topics is not None:
        return (section for key in sorted(topics) for section in _doc_sections(topics[key])), source
    return iter(_stdlib_docstrings()), f"{source}(stdlib-docstrings)"


# A reST-style heading: a text line underlined by a run of = - * ~ ^ characters.
_SECTION_START = re.compile(r"\n(?=[^\n]+\n[=\-*~^]{3,}\n)")


def _doc_sections(topic: str) -> list[str]:
    """Split a pydoc topic before each (sub)section heading.

    Whole topics range from 200 to 66K chars, so grouping whole topics wastes most of the text on a
    few huge documents (32 documents of 4000 chars); sections (~208, at most ~25K) give ~70.
    """
    return [section.strip() for section in _SECTION_START.split(topic.strip()) if section.strip()]


def _pydoc_topics() -> dict[str, str] | None:
    """CPython's bundled reference docs (~79 topics, ~465K chars), or None when stripped."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return None
    return topics if isinstance(topics, dict) and topics else None


def _stdlib_docstrings() -> list[str]:
    """One unit per stdlib module: its docstring and its public members' docstrings, sorted."""
    import importlib

    units = []
    for module_name in STDLIB_DOC_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue  # a minimal Python may lack e.g. lzma; the list stays deterministic otherwise
        docs = [f"{module_name}\n{inspect.getdoc(module) or ''}"]
        for attr in sorted(getattr(module, "__all__", None) or dir(module)):
            if attr.startswith("_"):
                continue
            member = getattr(module, attr, None)
            if inspect.ismodule(member) or not (inspect.isclass(member) or callable(member)):
                continue
            doc = inspect.getdoc(member)
            if doc:
                docs.append(f"{module_name}.{attr}\n{doc}")
        units.append(UNIT_SEPARATOR.join(docs).strip())
    return units


# ----------------------------------------------------------------------------- formats


_TOP_HEADING = re.compile(r"= (?!=)(.*[^=]) =")


def _is_article_heading(line: str) -> bool:
    """`` = Title = `` starts an article; `` = = Section = = `` does not."""
    return _TOP_HEADING.fullmatch(line.strip()) is not None


def _wikitext_articles(lines: Iterable[str]) -> Iterator[str]:
    """Split WikiText raw lines into articles at top-level headings; collapse blank-line runs."""
    article: list[str] = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if _is_article_heading(line) and article:
            yield "\n\n".join(article)
            article = []
        article.append(line)
    if article:
        yield "\n\n".join(article)


def _paragraphs(text: str) -> Iterator[str]:
    for block in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        block = block.strip()
        if block:
            yield block


def _gsm8k_problems(source: str, rows: Iterable[dict]) -> Iterator[str]:
    for i, row in enumerate(rows):
        question, answer = row.get("question"), row.get("answer")
        if not isinstance(question, str) or not isinstance(answer, str):
            raise PromptSourceError(f"dataset {source!r}: row {i} lacks string 'question' and 'answer'")
        yield f"Question: {question}\nAnswer: {answer}\n\n"


def _field_values(source: str, rows: Iterable[dict], field: str) -> Iterator[str]:
    for i, row in enumerate(rows):
        if field not in row:
            raise PromptSourceError(f"dataset {source!r}: row {i} has no field {field!r} (keys: {sorted(row)})")
        value = row[field]
        if not isinstance(value, str):
            raise PromptSourceError(f"dataset {source!r}: row {i} field {field!r} is {type(value).__name__}, not str")
        yield value.strip()

