"""Study configuration checks with messages that name the offending key.

The workflow validates ``config`` against ``workflow/schemas/config.schema.yaml``; this module
turns jsonschema's verdict into one line per problem ("config key 'prompts.per_bin': 'eight'
is not of type 'integer'") and adds the checks a schema cannot express (every codec builds).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml

from .errors import ConfigError, KvwireError


def load_schema(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _key_path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    where = _key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        names = ", ".join(repr(f"{where}.{k}" if where != "<top level>" else k) for k in extra)
        return f"unknown config key {names}{hint}"
    if error.validator == "required":
        return f"config key {where!r}: {error.message}"
    if error.validator == "propertyNames":
        return f"config key {where!r}: name {error.instance!r} is not allowed ({error.message})"
    return f"config key {where!r}: {error.message}"


def check_config(config: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Raise ConfigError listing every schema violation and every codec that does not build."""
    validator = jsonschema.Draft202012Validator(schema)
    problems = [_describe(e) for e in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))]
    problems += _non_finite_problems(config)
    if not problems:
        problems += _codec_problems(config.get("codecs", {}))
        problems += _pair_problems(config)
        problems += _gate_problems(config)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def codec_spec(codec_id: str, entry: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """(registered codec name, params) for one entry of the config's ``codecs`` mapping."""
    entry = entry or {}
    return entry.get("codec", codec_id), dict(entry.get("params", {}) or {})


def _codec_problems(codecs: Mapping[str, Any]) -> list[str]:
    from .codecs import build

    problems = []
    for codec_id, entry in codecs.items():
        name, params = codec_spec(codec_id, entry)
        try:
            build(name, params)
        except KvwireError as exc:
            problems.append(f"config key 'codecs.{codec_id}': {exc}")
    return problems


def _non_finite_problems(value: Any, path: tuple = ()) -> list[str]:
    """NaN and infinities pass a schema's ``type: number`` (YAML writes them ``.nan``, ``.inf``): every
    number of the config must be finite."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"config key {_key_path(path)!r}: {value!r} is not a finite number"]
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in _non_finite_problems(v, (*path, k))]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _non_finite_problems(v, (*path, i))]
    return []


def _gate_problems(config: Mapping[str, Any]) -> list[str]:
    """A gate or a waiver on a codec id the config does not define would pass planning and fail only
    after the whole study ran: name it now."""
    codecs = set(config.get("codecs", {}) or {})
    problems = [f"config key 'gates.{c}': {c!r} is not a codec id of this config (codecs: {', '.join(sorted(codecs))})"
                for c in (config.get("gates") or {}) if c not in codecs]
    for model, waived in (config.get("gate_waivers") or {}).items():
        problems += [f"config key 'gate_waivers.{model}.{c}': {c!r} is not a codec id of this config"
                     for c in (waived or {}) if c not in codecs and c != "identity"]
    return problems


def _pair_problems(config: Mapping[str, Any]) -> list[str]:
    """quality.pairs: two different codec ids each (a pair whose codecs this study does not run is
    left out at planning, see :func:`study_pairs`)."""
    problems = []
    for i, pair in enumerate((config.get("quality") or {}).get("pairs", []) or []):
        if pair[0] == pair[1]:
            problems.append(f"config key 'quality.pairs[{i}]': {pair!r} compares a codec with itself")
    return problems


def _narrow(config: dict[str, Any], section: str) -> list[str]:
    """Apply ``only_<section>``: keep only those entries of ``config[section]`` (in place, in the
    section's order) and return the dropped ids; an id the section does not define is a ConfigError.
    A config layered on another narrows a set this way: Snakemake merges mappings key by key, so it
    cannot remove an entry otherwise."""
    only = config.get(f"only_{section}")
    if not only:
        return []
    entries = config.get(section, {}) or {}
    unknown = [k for k in only if k not in entries]
    if unknown:
        raise ConfigError(f"config key 'only_{section}': {unknown} not defined under '{section}' "
                          f"(defined: {', '.join(entries)})")
    config[section] = {k: entries[k] for k in entries if k in only}
    return [k for k in entries if k not in only]


def narrow_codecs(config: dict[str, Any]) -> list[str]:
    """``only_codecs`` (``_narrow``), before anything reads the codec set; ``gates`` on the dropped
    codecs go too."""
    dropped = _narrow(config, "codecs")
    # a gate on a codec the narrowed study does not run is left out, as its pairs are (study_pairs):
    # otherwise it would fail as "not in the study" and stop the run
    if config.get("only_codecs") and config.get("gates"):
        config["gates"] = {c: f for c, f in config["gates"].items() if c in config["codecs"]}
    return dropped


def narrow_models(config: dict[str, Any]) -> list[str]:
    """``only_models`` (``_narrow``), before anything reads the model set: a config layered on a larger
    study runs one model's jobs and tables."""
    return _narrow(config, "models")


def study_pairs(config: Mapping[str, Any]) -> tuple[list[list[str]], list[list[str]]]:
    """(the configured codec pairs this study runs both codecs of, those it does not): a config that
    narrows ``codecs`` (a slice, a test, a smaller study) keeps the default's pairs list valid."""
    codecs = config.get("codecs", {}) or {}
    pairs = [list(p) for p in (config.get("quality") or {}).get("pairs", []) or []]
    return [p for p in pairs if all(c in codecs for c in p)], [p for p in pairs if not all(c in codecs for c in p)]
