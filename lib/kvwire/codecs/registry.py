"""Codec names -> classes. Adding a codec = one file + one line in ``codecs/__init__.py``.

Names compose with ``+``: ``TENSOR[+STAGE...]`` or ``STAGE[+STAGE...]`` (an implicit
identity tensor codec). Parameters of a single-stage codec are flat
(``{"level": 3}``); a composite's are keyed by stage name
(``{"int8": {...}, "zstd": {"level": 3}}``).
"""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import CodecError
from .base import ByteStage, Pipeline, TensorCodec

TENSOR_CODECS: dict[str, type[TensorCodec]] = {}
BYTE_STAGES: dict[str, type[ByteStage]] = {}


def register(cls):
    """Class decorator: make a codec or byte stage available by its ``name``."""
    table = BYTE_STAGES if issubclass(cls, ByteStage) else TENSOR_CODECS
    if cls.name in TENSOR_CODECS or cls.name in BYTE_STAGES:
        raise CodecError(f"codec name {cls.name!r} registered twice")
    table[cls.name] = cls
    return cls


def known_names() -> list[str]:
    return sorted(TENSOR_CODECS) + sorted(BYTE_STAGES)


def build(name: str, params: Mapping[str, Any] | None = None) -> Pipeline:
    """Build the codec pipeline ``name`` (e.g. ``int8``, ``zstd``, ``int8+zstd``)."""
    if not isinstance(name, str) or not name.strip():
        raise CodecError(f"codec name must be a non-empty string, got {name!r}")
    parts = [p.strip() for p in name.split("+")]
    for part in parts:
        if part not in TENSOR_CODECS and part not in BYTE_STAGES:
            raise CodecError(f"unknown codec {part!r} in {name!r}; known: {', '.join(known_names())}")
    for part in parts[1:]:
        if part not in BYTE_STAGES:
            raise CodecError(
                f"codec {name!r}: only lossless byte stages ({', '.join(sorted(BYTE_STAGES))}) may follow '+', "
                f"not {part!r}"
            )
    if len(set(parts)) != len(parts):
        raise CodecError(f"codec {name!r}: a stage appears twice")
    per_stage = _split_params(name, parts, dict(params or {}))
    named = []
    for part in parts:
        cls = TENSOR_CODECS.get(part) or BYTE_STAGES[part]
        named.append(cls(**per_stage[part]))
    if parts[0] in TENSOR_CODECS:
        tensor, stages = named[0], named[1:]
    else:
        tensor, stages = TENSOR_CODECS["identity"](), named
    return Pipeline(name, tensor, stages, named)


def _split_params(name: str, parts: list[str], params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    if len(parts) == 1:
        return {parts[0]: params}
    unknown = sorted(set(params) - set(parts))
    if unknown:
        raise CodecError(
            f"codec {name!r}: parameters of a composite are keyed by stage ({', '.join(parts)}); "
            f"unknown key(s) {unknown}"
        )
    out = {}
    for part in parts:
        value = params.get(part, {})
        if not isinstance(value, Mapping):
            raise CodecError(f"codec {name!r}: parameters for stage {part!r} must be a mapping, got {value!r}")
        out[part] = dict(value)
    return out


def describe() -> list[dict[str, Any]]:
    """Every registered stage with its kind, summary and parameters (for ``kvwire codecs``)."""
    rows = []
    for table, kind in ((TENSOR_CODECS, "tensor"), (BYTE_STAGES, "lossless byte stage")):
        for name in sorted(table):
            cls = table[name]
            rows.append(
                {
                    "name": name,
                    "kind": kind if kind != "tensor" else ("lossless" if cls.lossless else "lossy"),
                    "summary": cls.summary,
                    "params": {k: {"type": p.kind.__name__, "default": p.default, "help": p.help}
                               for k, p in cls.PARAMS.items()},
                }
            )
    return rows
