"""Sliding-window layers from a model's shape: how many prefix tokens each layer keeps.

Extraction (``kvwire.kv.window_starts``) keeps a sliding-window layer's last ``window - 1`` prefix
tokens -- what the first decode query reads in transformers' mask (``kv_idx > q_idx - window``) --
and a full-attention layer's whole prefix. Everything that sizes a cache from a model's SHAPE instead
of from a real record (the GPU timing tables, ``kvwire recommend``, job memory) counts the same
tokens through ``kept_tokens``: one implementation of the rule, no torch needed.

A model's layout is its ``sliding_window`` (None: no window) and ``layer_types`` (one entry per layer,
transformers' ``"sliding_attention"`` / ``"full_attention"``; also accepted as a string of ``S`` / ``F``
letters, the form ``models.csv`` stores). ``layer_types`` None with a window means every layer slides
(Mistral-7B-v0.1's config); a window of None means no layer does, whatever ``layer_types`` says.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

SLIDING, FULL = "sliding_attention", "full_attention"
LETTERS = {"S": SLIDING, "F": FULL}

# the GPU bench's model shapes (``kvwire.kernels.bench.MODEL_SHAPES``) that have sliding-window layers, from
# their official configs: (sliding_window, sliding_window_pattern -- every pattern-th layer is full). The
# other bench shapes attend to the whole prefix on every layer at the bench's lengths (Phi-3.5-mini's window
# is 262144; Mistral-7B is taken as v0.2/v0.3, whose configs have no window -- v0.1 had 4096 on every layer)
BENCH_LAYOUTS: dict[str, tuple[int, int]] = {"gemma-3-270m": (512, 6)}


def window_start(window: int | None, prefix_len: int) -> int:
    """The first prefix position a decode step reads on a layer with this sliding window (0 for a
    full-attention layer or a prefix inside the window): ``max(0, prefix_len - window + 1)``."""
    if not window:
        return 0
    return max(0, int(prefix_len) - int(window) + 1)


def is_sliding(layer_type: Any) -> bool:
    return isinstance(layer_type, str) and "sliding" in layer_type


def pattern_layer_types(n_layers: int, pattern: int) -> list[str]:
    """Gemma's ``sliding_window_pattern``: every ``pattern``-th layer (1-based) is full, the others slide."""
    return [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(n_layers)]


def parse_layer_types(value: Any) -> list[str] | None:
    """``layer_types`` as a list of transformers' names, from a list, a JSON list or an ``S``/``F``
    string (``models.csv``); None for a missing value (None, NaN, empty)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if text.startswith("["):
            return [str(t) for t in json.loads(text)]
        if set(text) <= set(LETTERS):
            return [LETTERS[c] for c in text]
        raise ValueError(f"layer_types {value!r} is neither a list nor a string of S/F letters")
    return [str(t) for t in value]


def layer_letters(layer_types: Sequence[str] | None) -> str:
    """``layer_types`` as ``S``/``F`` letters (``models.csv``'s form); empty for None."""
    return "".join("S" if is_sliding(t) else "F" for t in layer_types or ())


def kept_tokens(layer_types: Sequence[str] | str | None, sliding_window: int | None, seq: int,
                n_layers: int | None = None) -> list[int]:
    """Per layer, the prefix tokens a ``seq``-token cache keeps: ``min(seq, window - 1)`` on a sliding
    layer, ``seq`` on a full one (``window_start``'s rule). ``n_layers`` is needed only when
    ``layer_types`` is None (then every layer slides if there is a window, none otherwise), and must
    agree with it otherwise."""
    types = parse_layer_types(layer_types)
    if types is None:
        if n_layers is None:
            raise ValueError("kept_tokens needs layer_types or n_layers")
        types = [SLIDING if sliding_window else FULL] * int(n_layers)
    elif n_layers is not None and int(n_layers) != len(types):
        raise ValueError(f"{len(types)} layer types for {n_layers} layers")
    seq = int(seq)
    return [seq - window_start(sliding_window, seq) if is_sliding(t) else seq for t in types]


def kv_bytes(kept: Sequence[int], kv_heads: int, head_dim: int, element_size: int) -> int:
    """Raw bytes of a cache whose layers keep ``kept`` tokens: K and V of every kept token."""
    return 2 * int(kv_heads) * int(head_dim) * int(element_size) * sum(int(n) for n in kept)


def layout_of(facts: Mapping[str, Any]) -> tuple[list[str] | None, int | None]:
    """(layer_types, sliding_window) of a facts.json, a ``models.csv`` row or an official config: the
    layer types from ``layer_types`` or, failing that, ``sliding_window_pattern``; None where unknown."""
    window = facts.get("sliding_window")
    if window is None or (isinstance(window, float) and math.isnan(window)) or not window:
        return parse_layer_types(facts.get("layer_types")), None
    if facts.get("use_sliding_window") is False:
        return parse_layer_types(facts.get("layer_types")), None
    types = parse_layer_types(facts.get("layer_types"))
    pattern = facts.get("sliding_window_pattern") or facts.get("_sliding_window_pattern")
    n = facts.get("num_layers") or facts.get("num_hidden_layers")
    if types is None and pattern and n:
        types = pattern_layer_types(int(n), int(pattern))
    return types, int(window)


def bench_layout(model: str, n_layers: int) -> tuple[list[str] | None, int | None]:
    """(layer_types, sliding_window) of a GPU bench shape (``BENCH_LAYOUTS``; none for the others)."""
    if model not in BENCH_LAYOUTS:
        return None, None
    window, pattern = BENCH_LAYOUTS[model]
    return pattern_layer_types(int(n_layers), pattern), window
