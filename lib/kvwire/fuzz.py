"""A fuzzer for the wire container that recomputes every checksum, as a hostile sender would.

Random corruption is caught by the CRCs; a sender that recomputes them controls every header field and
every payload byte. ``mutate`` takes a real container apart (header JSON, payloads), changes one thing
-- a shape, the dtype, the codec name (one codec's payload read by another), a parameter, the meta, a
payload's bytes, length or an embedded integer -- and ``reseal`` writes a container whose checksums are
all valid again. ``run`` decodes each mutant with bounded limits and counts the outcomes: a decode that
succeeds, the project's own error, or a foreign exception (the failure this fuzzer exists to find).
Used by ``tests/test_hostile.py`` (a bounded run) and ``bench/fuzz_wire.py`` (a long one).
"""

from __future__ import annotations

import json
import random
import re
import struct
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from . import wire
from .codecs import build
from .codecs.registry import BYTE_STAGES, TENSOR_CODECS
from .errors import KvwireError
from .limits import WireLimits

_CAUGHT = re.compile(r"(?:could not be decoded|cannot be built): (\w+)")

# what a hostile header puts where a number belongs (raw JSON text, so 1e400 and nesting stay as written)
HOSTILE_NUMBERS = ["0", "-1", "1", "2", "3", "7", "65536", "16777216", "2147483648", "9223372036854775807",
                   "18446744073709551616", "1e400", "-1e400", "1.5", "0.0", "-0.5", "1e-320", "true", "null",
                   '"3"', "[]", "{}", "[[[[1]]]]"]


def split(data: bytes) -> tuple[dict, list[bytes]]:
    """A (valid) container's header object and payloads."""
    header, frames = wire.read_frames(data)
    return header.to_json(), [f.payload for f in frames]


def reseal(header_json: str | bytes, payloads: Sequence[bytes]) -> bytes:
    """A container of this header text and these payloads with every checksum valid."""
    body = header_json.encode() if isinstance(header_json, str) else header_json
    pre = wire._PREAMBLE.pack(wire.MAGIC, wire.VERSION, 0, len(body))
    parts = [pre, body, wire._CRC.pack(zlib.crc32(pre + body))]
    crcs = []
    for i, p in enumerate(payloads):
        crcs.append(zlib.crc32(p))
        parts.append(wire.frame_bytes(i, p, crcs[-1]))
    parts.append(wire.trailer_bytes(crcs))
    return b"".join(parts)


def _dump(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _with_raw(obj: dict, path: Sequence[Any], raw: str) -> str:
    """The header as JSON text with the value at ``path`` replaced by raw JSON text."""
    marker = "\u2063KVFUZZ\u2063"
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = marker
    return _dump(obj).replace(json.dumps(marker), raw, 1)


def _param_keys(codec: str) -> list[str]:
    names = codec.split("+")
    keys = []
    for n in names:
        cls = TENSOR_CODECS.get(n) or BYTE_STAGES.get(n)
        keys += list(getattr(cls, "PARAMS", {}) or {})
    return keys or ["group_size"]


def mutate(rng: random.Random, header: dict, payloads: list[bytes], codecs: Sequence[str]) -> tuple[str, bytes]:
    """One mutant: (what was changed, container bytes with valid checksums)."""
    h = json.loads(_dump(header))
    p = list(payloads)
    kind = rng.choice(["shape", "shape", "dtype", "codec", "param", "param", "param", "meta", "layers",
                       "payload_bytes", "payload_bytes", "payload_int", "payload_int", "payload_len", "swap"])
    text = None
    if kind == "shape":
        i, j = rng.randrange(len(h["layout"]["shapes"])), rng.randrange(3)
        text = _with_raw(h, ["layout", "shapes", i, j], rng.choice(HOSTILE_NUMBERS))
    elif kind == "dtype":
        h["layout"]["dtype"] = rng.choice(["float16", "bfloat16", "float32", "int8", "float64", "", 3, None])
    elif kind == "codec":  # one codec's payload read by another, with the other's default params
        h["codec"] = rng.choice(list(codecs) + ["no_such_codec", "int8+zstd+zstd", "+", ""])
        h["params"] = {} if rng.random() < 0.7 else h["params"]
    elif kind == "param":
        keys = _param_keys(h["codec"]) + ["unknown_key"]
        key = rng.choice(keys)
        params = h["params"]
        if "+" in h["codec"] and params and all(isinstance(v, dict) for v in params.values()):
            stage = rng.choice(sorted(params))
            params[stage][key] = None
            text = _with_raw(h, ["params", stage, key], rng.choice(HOSTILE_NUMBERS + ['"x"', '"nf"', '"kmeans"']))
        else:
            params[key] = None
            text = _with_raw(h, ["params", key], rng.choice(HOSTILE_NUMBERS + ['"x"', '"nf"', '"kmeans"']))
    elif kind == "meta":
        n = len(h["layout"]["shapes"])
        h["meta"]["window_starts"] = rng.choice([[0] * (n + 1), [rng.choice([-1, 0, 1, 1 << 40]) for _ in range(n)],
                                                 "x", [1.5] * n, None])
    elif kind == "layers":
        shapes = h["layout"]["shapes"]
        if rng.random() < 0.5 and len(shapes) > 1:
            shapes.pop()
        else:
            shapes.append(list(shapes[-1]))
    elif kind == "payload_bytes":
        i = rng.randrange(len(p))
        b = bytearray(p[i])
        for _ in range(rng.randint(1, 8)):
            if b:
                b[rng.randrange(len(b))] = rng.choice([0, 255, rng.randrange(256)])
        p[i] = bytes(b)
    elif kind == "payload_int":  # an embedded length or count: section tables, symbol counts, sizes
        i = rng.randrange(len(p))
        b = bytearray(p[i])
        fmt = rng.choice(["<I", "<Q", "<i", "<H"])
        if len(b) >= struct.calcsize(fmt):
            at = rng.randrange(len(b) - struct.calcsize(fmt) + 1)
            top = (1 << (8 * struct.calcsize(fmt) - (1 if fmt.islower() or fmt == "<i" else 0))) - 1
            value = rng.choice([0, 1, top, top // 2, rng.randrange(1 << 16)])
            if fmt == "<i":
                value = rng.choice([-1, -(1 << 31), value & 0x7FFFFFFF])
            struct.pack_into(fmt, b, at, value)
        p[i] = bytes(b)
    elif kind == "payload_len":
        i = rng.randrange(len(p))
        cut = rng.randrange(len(p[i]) + 1)
        p[i] = p[i][:cut] if rng.random() < 0.5 else p[i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    else:  # swap two layers' payloads
        if len(p) > 1:
            a, b = rng.sample(range(len(p)), 2)
            p[a], p[b] = p[b], p[a]
    return kind, reseal(text if text is not None else _dump(h), p)


@dataclass
class FuzzReport:
    inputs: int = 0
    # "decoded", "WireError", "WireError (from IndexError in kivi2)" (a foreign error inside a codec that
    # wire.decode_frame turned into a WireError: the codec lacks its own check), "FOREIGN <type>"
    outcomes: Counter = field(default_factory=Counter)
    by_mutation: Counter = field(default_factory=Counter)
    foreign: list[tuple[str, str, str]] = field(default_factory=list)  # (mutation, type, message) of the first few
    slowest_s: float = 0.0
    seconds: float = 0.0

    @property
    def foreign_count(self) -> int:
        return sum(n for k, n in self.outcomes.items() if k.startswith("FOREIGN"))


def run(seeds: dict[str, bytes], n: int, *, seed: int = 0, limits: WireLimits | None = None,
        progress: Callable[[int], None] | None = None, keep: int = 20) -> FuzzReport:
    """Decode ``n`` mutants of the seed containers (codec id -> a valid container) under ``limits``."""
    rng = random.Random(seed)
    limits = limits or WireLimits(max_cache_bytes=8 << 20)
    parts = {name: split(data) for name, data in seeds.items()}
    names = sorted(parts)
    report = FuzzReport()
    t_start = time.perf_counter()
    for k in range(n):
        name = names[k % len(names)]
        header, payloads = parts[name]
        kind, data = mutate(rng, header, payloads, names)
        t = time.perf_counter()
        try:
            wire.decode(data, limits)
            outcome = "decoded"
        except KvwireError as exc:
            outcome = type(exc).__name__
            caught = _CAUGHT.search(str(exc))
            if caught:  # a codec failed with a foreign error that the decode boundary turned into ours
                outcome += f" (from {caught.group(1)} in {header['codec'] if kind != 'codec' else 'a swapped codec'})"
        except Exception as exc:  # noqa: BLE001 -- counting them is the point
            outcome = f"FOREIGN {type(exc).__name__}"
            if len(report.foreign) < keep:
                report.foreign.append((f"{name}/{kind}", type(exc).__name__, str(exc)[:200]))
        report.slowest_s = max(report.slowest_s, time.perf_counter() - t)
        report.inputs += 1
        report.outcomes[outcome] += 1
        report.by_mutation[kind] += 1
        if progress is not None:
            progress(k)
    report.seconds = time.perf_counter() - t_start
    return report


def seed_containers(layers, stats, codecs: Sequence[str] | None = None) -> dict[str, bytes]:
    """One valid container per codec id (default: every registered tensor codec and byte stage)."""
    names = list(codecs) if codecs is not None else sorted(TENSOR_CODECS) + sorted(BYTE_STAGES)
    return {name: wire.encode(build(name), layers, stats=stats) for name in names}
