"""``kvwire recommend``: the codec with the lowest expected end-to-end time for one request that meets
a quality floor, from the cached tables (break_even_all.csv: measured codec times and wire sizes per
model shape, length and encoder; quality.csv: token agreement per model and codec).

Nothing is invented silently: a model, GPU or length that was not measured is mapped to the nearest
measured one, times and sizes are scaled linearly in the bytes processed, and every such step is
returned as a note that the command prints.

Raw bytes count what is sent: a sliding-window layer keeps ``min(tokens, window - 1)`` tokens
(``kvwire.windows.kept_tokens``, as extraction keeps them; Gemma-3). A model's layout comes from
``models.csv`` beside the tables (``sliding_window`` and ``layer_types``), from the packaged model card
of its shape and window where ``models.csv`` has no ``layer_types`` (tables published before it), or
from the GPU bench's shapes (``kvwire.windows.BENCH_LAYOUTS``). Timings taken on the whole prefix of a
sliding-window model (before extraction trimmed it) are scaled to the kept bytes, and a note says so.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .decide import fastest_meeting_floor
from .errors import KvwireError
from .transfer import CodecCost, baseline_time, pipelined_time
from .windows import bench_layout, is_sliding, kept_tokens, kv_bytes, layout_of, pattern_layer_types

BYTES_PER_ELEMENT = {"bfloat16": 2, "float16": 2, "float32": 4}
_PREFIX_BITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}  # decimal SI
# every accepted unit, exact and case-sensitive (b = bit, B = byte), -> bits per second
BANDWIDTH_UNITS: dict[str, int] = {
    **{f"{p}{u}": n for u in ("bps", "b/s", "bit/s") for p, n in _PREFIX_BITS.items()},
    **{f"{p}B/s": 8 * n for p, n in _PREFIX_BITS.items()},
}
_ACCEPTED = ("accepted units (case-sensitive, decimal SI): bits per second "
             + ", ".join(u for u in BANDWIDTH_UNITS if "B" not in u)
             + "; bytes per second " + ", ".join(u for u in BANDWIDTH_UNITS if "B" in u)
             + " (1 GB/s = 8 Gbps); a bare number is Gbps")
_RATE = re.compile(r"\s*([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*(.*?)\s*")
_BARE = ("bps", "b/s", "bit/s", "B/s", "Bps")


def _unit_hint(unit: str) -> str:
    """Why an unaccepted unit is refused, where it looks like one that is accepted."""
    if unit[:1] == "m" and unit[1:] in _BARE:
        return f"{unit!r} would be milli-{'bytes' if 'B' in unit else 'bits'} per second; mega is M"
    if unit[:1] == "K" and unit[1:] in _BARE:
        return f"{unit!r}: K is not an SI prefix (1000 or 1024?); kilo is k"
    if unit[-3:] == "Bps" and unit[:-3] in _PREFIX_BITS:
        return f"{unit!r}: bits or bytes? write {unit[:-3]}B/s for bytes, {unit[:-3]}bps for bits"
    same = [u for u in BANDWIDTH_UNITS if u.casefold() == unit.casefold()]
    if same:
        return f"{unit!r}: units are case-sensitive (b = bit, B = byte); did you mean {' or '.join(same)}?"
    return f"unknown unit {unit!r}"


def parse_bandwidth(text: str) -> float:
    """A link rate -> Gbps. Units are exact and case-sensitive, decimal SI (``BANDWIDTH_UNITS``): bits
    per second as bps, kbps, Mbps, Gbps, Tbps (or b/s, kb/s, ... and bit/s, kbit/s, ...), bytes per second
    as B/s, kB/s, MB/s, GB/s, TB/s (1 GB/s = 8 Gbps). A bare number is Gbps. Anything else, including forms
    that could mean bits or bytes (``100gb``, ``GBps``, ``KB/s``) or millibits (``mbps``), and a rate that
    is not positive and finite, raises ``KvwireError`` listing the accepted units."""
    m = _RATE.fullmatch(str(text))
    if not m:
        raise KvwireError(f"bandwidth {text!r} is not a positive rate like 25Gbps or 100GB/s; {_ACCEPTED}")
    value, unit = float(m.group(1)), m.group(2)
    if unit and unit not in BANDWIDTH_UNITS:
        raise KvwireError(f"bandwidth {text!r}: {_unit_hint(unit)}; {_ACCEPTED}")
    if not (math.isfinite(value) and value > 0):
        raise KvwireError(f"bandwidth {text!r} is not a positive, finite rate; {_ACCEPTED}")
    return value * BANDWIDTH_UNITS[unit] / 1e9 if unit else value


@dataclass(frozen=True)
class Shape:
    layers: int
    kv_heads: int
    head_dim: int
    # sliding-window layout (``kvwire.windows``): None = every layer attends to the whole prefix
    sliding_window: int | None = field(default=None, compare=False)
    layer_types: tuple[str, ...] | None = field(default=None, compare=False)

    def distance(self, other: "Shape") -> float:
        return sum(abs(math.log(a / b)) for a, b in ((self.layers, other.layers), (self.kv_heads, other.kv_heads),
                                                     (self.head_dim, other.head_dim)))

    def bytes_per_token(self, dtype: str = "bfloat16") -> int:
        """Bytes per token of a layer-complete cache (every layer keeps the token)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * BYTES_PER_ELEMENT[dtype]

    def kept_tokens(self, tokens: int) -> list[int]:
        """Per layer, the tokens a ``tokens``-token prefix keeps (``kvwire.windows.kept_tokens``)."""
        if not self.sliding_window:
            return [int(tokens)] * self.layers
        return kept_tokens(self.layer_types, self.sliding_window, tokens, n_layers=self.layers)

    def raw_bytes(self, tokens: int, dtype: str = "bfloat16") -> int:
        """Raw bytes of a ``tokens``-token prefix's cache as sent: sliding layers count their kept tokens."""
        return kv_bytes(self.kept_tokens(tokens), self.kv_heads, self.head_dim, BYTES_PER_ELEMENT[dtype])

    def with_layout(self, types, window) -> "Shape":
        if not window:
            return Shape(self.layers, self.kv_heads, self.head_dim)
        return Shape(self.layers, self.kv_heads, self.head_dim, int(window), None if types is None else tuple(types))

    def __str__(self) -> str:
        text = f"{self.layers} layers x {self.kv_heads} KV heads x {self.head_dim}"
        if self.sliding_window:
            n = self.layers if self.layer_types is None else sum(map(is_sliding, self.layer_types))
            text += f", {n} sliding-window layers of {self.sliding_window}"
        return text


def parse_shape(text: str) -> Shape:
    m = re.fullmatch(r"\s*(\d+)\s*[x,]\s*(\d+)\s*[x,]\s*(\d+)\s*", str(text))
    if not m or min(map(int, m.groups())) < 1:
        raise KvwireError(f"shape {text!r} is not LAYERSxKV_HEADSxHEAD_DIM, e.g. 32x8x128")
    return Shape(*map(int, m.groups()))


@dataclass
class Recommendation:
    model: str
    prompt_tokens: int
    bandwidth_gbps: float
    encoder: str
    floor: float
    choice: str
    expected_s: float
    raw_s: float
    candidates: pd.DataFrame
    notes: list[str] = field(default_factory=list)


class CachedTables:
    """The two tables ``recommend`` reads, with clear errors when they are absent or malformed."""

    NEEDS = {"break_even_all": ["device", "device_name", "model", "layers", "kv_heads", "head_dim", "seq", "dtype",
                                "codec", "raw_bytes", "wire_bytes", "encode_ms", "decode_ms"],
             "quality": ["model", "codec", "token_agreement", "ratio"]}

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.frames = {}
        for name, cols in self.NEEDS.items():
            path = self.dir / f"{name}.csv"
            if not path.exists():
                raise KvwireError(f"no cached table {path} (run from the repository root, or pass --tables DIR)")
            frame = pd.read_csv(path)
            missing = [c for c in cols if c not in frame.columns]
            if missing:
                raise KvwireError(f"{path} lacks columns {missing}")
            self.frames[name] = frame

    @property
    def timings(self) -> pd.DataFrame:
        return self.frames["break_even_all"]

    @property
    def quality(self) -> pd.DataFrame:
        return self.frames["quality"]

    def shapes(self) -> dict[str, Shape]:
        """Every timed model's shape, with its sliding-window layout (``layouts``)."""
        t = self.timings.drop_duplicates("model")
        layouts = self.layouts()
        out = {}
        for r in t.itertuples():
            shape = Shape(int(r.layers), int(r.kv_heads), int(r.head_dim))
            types, window = layouts.get(r.model) or bench_layout(r.model, shape.layers)
            out[r.model] = shape.with_layout(types, window)
        return out

    def layouts(self) -> dict[str, tuple[list[str] | None, int | None]]:
        """(layer_types, sliding_window) of the models ``models.csv`` beside the tables describes (none
        without it); a window without ``layer_types`` (tables published before that column) takes the
        layer types of the packaged model card with the same shape and window."""
        path = self.dir / "models.csv"
        if not path.exists():
            return {}
        out = {}
        for r in pd.read_csv(path).to_dict("records"):
            types, window = layout_of(r)
            if window and types is None:
                types = card_layer_types(r.get("num_layers"), r.get("num_kv_heads"), r.get("head_dim"), window)
            out[r["name"]] = (types, window)
        return out


def card_layer_types(layers, kv_heads, head_dim, window) -> list[str] | None:
    """The layer types of the packaged model card (``kvwire/model_cards``) with this shape and sliding
    window, or None when no card has them."""
    import json
    from importlib import resources as importlib_resources

    want = (layers, kv_heads, head_dim, window)
    for entry in sorted((importlib_resources.files("kvwire") / "model_cards").iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue
        try:
            cfg = json.loads(entry.read_text(encoding="utf-8")).get("config", {})
        except (json.JSONDecodeError, AttributeError):
            continue
        heads = cfg.get("num_attention_heads")
        dim = cfg.get("head_dim") or (cfg["hidden_size"] // heads if heads and cfg.get("hidden_size") else None)
        got = (cfg.get("num_hidden_layers"), cfg.get("num_key_value_heads", heads), dim, cfg.get("sliding_window"))
        if all(a is not None and b is not None and int(a) == int(b) for a, b in zip(want, got)):
            types, _ = layout_of({**cfg, "num_layers": cfg.get("num_hidden_layers")})
            if types is None and cfg.get("sliding_window_pattern"):
                types = pattern_layer_types(int(layers), int(cfg["sliding_window_pattern"]))
            return types
    return None


def _nearest(shape: Shape, candidates: dict[str, Shape]) -> str:
    return min(sorted(candidates), key=lambda m: (shape.distance(candidates[m]), m))


def recommend(tables: CachedTables, model: str, prompt_tokens: int, bandwidth_gbps: float, *,
              gpu: str | None = None, floor: float = 0.95, shape: Shape | None = None,
              dtype: str = "bfloat16", latency_s: float = 0.0) -> Recommendation:
    if prompt_tokens < 1:
        raise KvwireError(f"--prompt-tokens must be at least 1, not {prompt_tokens}")
    if not 0 < floor <= 1:
        raise KvwireError(f"--min-token-agreement must lie in (0, 1], not {floor}")
    if dtype not in BYTES_PER_ELEMENT:
        raise KvwireError(f"dtype {dtype!r} is not one of {sorted(BYTES_PER_ELEMENT)}")
    notes: list[str] = []
    shapes = tables.shapes()
    if model in shapes:
        if shape and shape != shapes[model]:
            notes.append(f"--shape {shape} given for {model}, whose measured shape is {shapes[model]}: using --shape")
        shape = shapes[model] if shape is None or shape == shapes[model] else shape  # (with its window layout)
    elif shape is None:
        raise KvwireError(f"unknown model {model!r}: known are {', '.join(sorted(shapes))}; "
                          f"for another model pass --shape LAYERSxKV_HEADSxHEAD_DIM")

    # the encoder's timings
    t = tables.timings[tables.timings["dtype"] == dtype]
    if gpu is None:
        encoder, rows = "CPU", t[t["device"] == "cpu"]
    else:
        gpus = t[t["device"] == "gpu"]
        names = sorted(gpus["device_name"].unique())
        if not names:
            raise KvwireError("the cached tables hold no GPU timings")
        match = [n for n in names if gpu.lower() in n.lower()]
        if match:
            encoder = match[0]
        else:
            encoder = gpus["device_name"].value_counts().idxmax()
            notes.append(f"GPU {gpu!r} was not measured (measured: {', '.join(names)}): using {encoder}'s timings")
        rows = gpus[gpus["device_name"] == encoder]
    if rows.empty:
        raise KvwireError(f"no {encoder} timings in {dtype} in the cached tables")
    timed = {m: shapes[m] for m in rows["model"].unique()}
    timed_model = model if model in timed else _nearest(shape, timed)
    if timed_model != model:
        notes.append(f"{model} ({shape}) has no {encoder} timings: using the nearest timed shape, "
                     f"{timed_model} ({timed[timed_model]})")
    rows = rows[rows["model"] == timed_model]
    seqs = sorted(rows["seq"].unique())
    seq = min(seqs, key=lambda s: (abs(math.log(s / prompt_tokens)), s))
    if seq != prompt_tokens:
        notes.append(f"{prompt_tokens} tokens were not timed: scaling the {seq}-token timings and sizes linearly")
    rows = rows[rows["seq"] == seq]

    # the quality floor, on the model itself or the nearest scored one
    q = tables.quality
    scored = {m: shapes[m] for m in q["model"].unique() if m in shapes}
    if model in q["model"].values:
        quality_model = model
    elif scored:
        quality_model = _nearest(shape, scored)
        notes.append(f"{model} was not scored for quality: the floor is checked on the nearest scored shape, "
                     f"{quality_model} ({scored[quality_model]})")
    else:
        raise KvwireError("the quality table names no model with a known shape")
    agreement = q[q["model"] == quality_model].set_index("codec")["token_agreement"]

    raw_bytes = shape.raw_bytes(prompt_tokens, dtype)  # a sliding-window layer counts only its kept tokens
    timed_raw = float(rows["raw_bytes"].iloc[0])
    timed_shape = timed[timed_model]
    full_raw = timed_shape.bytes_per_token(dtype) * seq
    if timed_shape.raw_bytes(seq, dtype) != full_raw and math.isclose(timed_raw, full_raw, rel_tol=1e-4):
        notes.append(f"the {seq}-token {encoder} timings of {timed_model} were taken on the whole prefix of every "
                     f"layer, before sliding-window layers were trimmed to their window: scaled to the kept bytes")
    scale = raw_bytes / timed_raw  # bytes processed: times and sizes scale with them
    raw_s = baseline_time(raw_bytes, bandwidth_gbps, latency_s)
    kept = shape.kept_tokens(prompt_tokens)  # the per-layer split of the pipelined model: by layer tokens
    out = []
    for r in rows.itertuples():
        if r.codec not in agreement.index or r.codec == "identity":
            continue
        cost = CodecCost.uniform(raw_bytes, r.wire_bytes * scale, r.encode_ms * 1e-3 * scale,
                                 r.decode_ms * 1e-3 * scale, kept)
        expected = pipelined_time(cost, bandwidth_gbps, latency_s)
        out.append({"codec": r.codec, "ratio": raw_bytes / cost.total_wire_bytes,
                    "token_agreement": float(agreement[r.codec]), "meets_floor": bool(agreement[r.codec] >= floor),
                    "encode_ms": r.encode_ms * scale, "decode_ms": r.decode_ms * scale,
                    "expected_s": expected, "speedup_vs_raw": raw_s / expected})
    candidates = pd.DataFrame(out).sort_values(["expected_s", "codec"]).reset_index(drop=True)
    decision = fastest_meeting_floor(dict(zip(candidates["codec"], candidates["expected_s"])),
                                     dict(zip(candidates["codec"], candidates["meets_floor"])), raw_s)
    choice, expected = decision.choice, decision.seconds
    if decision.best is None:
        notes.append(f"no timed codec reaches token agreement {floor:g} on {quality_model}")
    return Recommendation(model, prompt_tokens, bandwidth_gbps, encoder, floor, choice, expected, raw_s,
                          candidates, notes)


def format_recommendation(rec: Recommendation) -> str:
    lines = [f"model {rec.model}, {rec.prompt_tokens} prompt tokens, {rec.bandwidth_gbps:g} Gbps link, "
             f"encoder {rec.encoder}, token agreement >= {rec.floor:g}"]
    lines += [f"note: {n}" for n in rec.notes]
    if rec.choice == "raw":
        lines.append(f"recommendation: send the cache raw ({rec.raw_s * 1e3:.3g} ms); no codec that meets the floor "
                     "is expected to be faster")
    else:
        lines.append(f"recommendation: {rec.choice}, expected {rec.expected_s * 1e3:.3g} ms end to end (pipelined) "
                     f"against {rec.raw_s * 1e3:.3g} ms raw ({rec.raw_s / rec.expected_s:.3g}x)")
    lines.append("")
    lines.append(f"{'codec':<18}{'ratio':>7}{'agreement':>11}{'floor':>7}{'encode ms':>11}{'decode ms':>11}"
                 f"{'expected ms':>13}{'vs raw':>8}")
    for r in rec.candidates.itertuples():
        lines.append(f"{r.codec:<18}{r.ratio:>7.3g}{r.token_agreement:>11.3f}{'ok' if r.meets_floor else '-':>7}"
                     f"{r.encode_ms:>11.3g}{r.decode_ms:>11.3g}{r.expected_s * 1e3:>13.3g}{r.speedup_vs_raw:>7.3g}x")
    lines.append(f"{'raw':<18}{1:>7}{1:>11.3f}{'ok':>7}{0:>11}{0:>11}{rec.raw_s * 1e3:>13.3g}{1:>7}x")
    return "\n".join(lines)
