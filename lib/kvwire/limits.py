"""Hard limits on what a wire container may declare, checked before anything is allocated.

Every byte of a container is hostile until checked: the header's shapes size the decoder's
allocations, so a 200-byte header could otherwise ask for gigabytes. ``WireLimits`` bounds the header
(its size, its JSON nesting, every dimension, the whole cache's raw bytes) and each frame's payload
(``payload_limit``: a small multiple of its layer's raw size, the most any codec's layout writes), so
a decode's memory is a small multiple of the declared, validated cache size. A violation is a
``WireError``. The defaults admit any cache of the study and of the models the paper names; a user
with larger caches passes their own ``WireLimits`` (docs/TRANSFER.md, "Threat model").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from .errors import ConfigError


@dataclass(frozen=True)
class WireLimits:
    max_cache_bytes: int = 16 << 30  # the whole cache, raw (K and V of every layer)
    max_layers: int = 1024
    max_heads: int = 1024
    max_tokens: int = 1 << 22  # per layer
    max_head_dim: int = 4096
    max_header_bytes: int = 1 << 20  # the header's JSON
    max_json_depth: int = 16

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"wire limit {f.name} must be a positive integer, got {v!r}")

    @classmethod
    def from_mapping(cls, values: dict | None) -> "WireLimits":
        """From a config mapping (``transfer.limits``): unknown keys are an error naming them."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown wire limit(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


DEFAULT_LIMITS = WireLimits()

# Hard caps on the codec parameters that size a decoder's buffers (``Param`` maxima; a header's params
# are the sender's): layers, tokens, head_dim and group sizes far above any real cache's, low enough
# that no parameter alone makes a decode allocate more than a small multiple of the cache.
MAX_LAYERS = 1024
MAX_TOKENS = 1 << 24
MAX_HEAD_DIM = 4096
MAX_GROUP = 4096
MAX_INT_PARAM = (1 << 31) - 1  # any integer parameter without a tighter maximum

# A layer's payload may exceed its raw size (an identity copy plus a small header; token positions
# as int64 beside head_dim-1 tensors; a 16-bit guard band plus codes): 4x raw, 16 bytes per stored
# token and head, and 64 KiB of fixed overhead cover every codec's layout with room to spare.
PAYLOAD_RAW_FACTOR = 4
PAYLOAD_PER_TOKEN_HEAD = 16
PAYLOAD_OVERHEAD = 64 << 10


def payload_limit(shape: tuple[int, int, int], element_size: int) -> int:
    """The most bytes one layer's payload (or any stage's output on the way back) may hold."""
    h, s, d = shape
    return PAYLOAD_RAW_FACTOR * 2 * h * s * d * element_size + PAYLOAD_PER_TOKEN_HEAD * h * s + PAYLOAD_OVERHEAD


def json_depth(text: bytes, limit: int) -> int:
    """The nesting depth of a JSON document's arrays and objects (strings skipped), without parsing it,
    stopping as soon as ``limit`` is passed: ``json.loads`` recurses, and a deep document would
    otherwise end in RecursionError."""
    depth = deepest = 0
    for m in _BRACKETS.finditer(_STRINGS.sub(b'""', text)):
        if m.group() in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        else:
            depth -= 1
    return deepest


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(rb"[\[\]{}]")
