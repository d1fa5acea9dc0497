"""Authentication for the connector: a shared-secret handshake and a MAC over every piece.

CRC32 catches accidents, not a sender who recomputes it (docs/TRANSFER.md, "Threat model"). When both
ends hold the same key, the connection starts with a challenge: the sender says ``KVHI``, the receiver
answers ``KVNC`` and a fresh 16-byte nonce, the sender proves it holds the key with
``HMAC-SHA256(key, "kvwire-auth-v1" || nonce)``. Every piece of the container that follows (header,
each frame, trailer) is followed by ``HMAC-SHA256(key, nonce || piece number || piece)``, checked before
the piece is decoded: a piece that was changed, dropped, reordered or replayed from another connection
fails its tag. Confidentiality is out of scope (TLS).
"""

from __future__ import annotations

import hashlib
import hmac
import os

from .errors import ConfigError

HELLO = b"KVHI"
NONCE = b"KVNC"
PROOF = b"KVAU"
NONCE_LEN = 16
TAG_LEN = 32
_CONTEXT = b"kvwire-auth-v1"
MIN_KEY_BYTES = 16


def check_key(key: bytes | None) -> bytes | None:
    """``None`` (no authentication) or a key of at least ``MIN_KEY_BYTES`` bytes."""
    if key is None:
        return None
    if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"a connector key must be at least {MIN_KEY_BYTES} bytes")
    return bytes(key)


def key_from_env(name: str = "KVWIRE_KEY") -> bytes | None:
    """The key in environment variable ``name`` (hex), or None when it is not set."""
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return check_key(bytes.fromhex(value.strip()))
    except ValueError:
        raise ConfigError(f"environment variable {name} must hold the key in hex") from None


def new_nonce() -> bytes:
    return os.urandom(NONCE_LEN)


def proof(key: bytes, nonce: bytes) -> bytes:
    return hmac.new(key, _CONTEXT + nonce, hashlib.sha256).digest()


def proof_ok(key: bytes, nonce: bytes, claimed: bytes) -> bool:
    return hmac.compare_digest(proof(key, nonce), claimed)


class PieceMac:
    """Tags the pieces of one connection in order: ``tag(piece)`` on the sender, ``ok(piece, tag)`` on
    the receiver; both count pieces, so a dropped, repeated or reordered piece fails."""

    def __init__(self, key: bytes, nonce: bytes) -> None:
        self._key, self._nonce, self._n = key, nonce, 0

    def tag(self, *parts: bytes | bytearray | memoryview) -> bytes:
        mac = hmac.new(self._key, self._nonce + self._n.to_bytes(8, "little"), hashlib.sha256)
        for p in parts:
            mac.update(p)
        self._n += 1
        return mac.digest()

    def ok(self, tag: bytes, *parts: bytes | bytearray | memoryview) -> bool:
        return hmac.compare_digest(self.tag(*parts), tag)
