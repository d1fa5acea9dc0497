"""Wire container v1: layout, streaming pieces, and every kind of damage detected."""

import struct
import zlib

import pytest
import torch

from conftest import random_layers
from kvwire import wire
from kvwire.codecs import build
from kvwire.errors import WireError


@pytest.fixture
def container():
    return wire.encode(build("int8"), random_layers(n_layers=4), {"model": "m", "prompt_id": "p0"})


def test_layout_magic_version_and_frames(container):
    assert container[:4] == b"KVWR"
    magic, version, flags, hlen = struct.unpack_from("<4sHHI", container, 0)
    assert version == 1 and flags == 0
    header, frames = wire.read_frames(container)
    assert header.n_layers == 4 and [f.layer for f in frames] == [0, 1, 2, 3]
    assert header.meta == {"model": "m", "prompt_id": "p0"}
    assert container[-12:-8] == b"KVEN"
    report = wire.inspect(container)
    assert report["checksum"] == "ok"
    assert report["payload_bytes"] + report["overhead_bytes"] == len(container)


def test_streamed_pieces_equal_whole_container():
    layers = random_layers(n_layers=3)
    pieces = list(wire.iter_encode(build("int8+zstd"), layers))
    assert len(pieces) == 1 + 3 + 1  # header, one frame per layer, trailer
    assert b"".join(pieces) == wire.encode(build("int8+zstd"), layers)


def test_every_truncation_is_detected(container):
    for cut in range(0, len(container), max(1, len(container) // 97)):
        with pytest.raises(WireError):
            wire.decode(container[:cut])


def test_every_single_byte_flip_is_detected(container):
    # flip one bit in a spread of positions covering header, frame heads, payloads and trailer
    positions = sorted(set(range(0, len(container), max(1, len(container) // 211))) | {len(container) - 1})
    for pos in positions:
        damaged = bytearray(container)
        damaged[pos] ^= 0x10
        with pytest.raises(WireError):
            wire.decode(bytes(damaged))


@pytest.mark.parametrize("mutate,match", [
    (lambda b: b"XXXX" + b[4:], "not a kvwire container"),
    (lambda b: b[:4] + struct.pack("<H", 9) + b[6:], "unsupported wire version 9"),
    (lambda b: b + b"\0", "unexpected byte"),
    (lambda b: b[:10], "truncated"),
])
def test_errors_name_the_problem(container, mutate, match):
    with pytest.raises(WireError, match=match):
        wire.decode(mutate(container))


def test_payload_corruption_names_the_frame(container):
    header, offset = wire.read_header(container)
    damaged = bytearray(container)
    damaged[offset + 24 + 5] ^= 0xFF  # inside frame 0's payload
    with pytest.raises(WireError, match="frame 0 payload checksum mismatch"):
        wire.decode(bytes(damaged))


def test_unknown_codec_in_a_valid_container():
    """A container from a newer kvwire (valid CRCs, unknown codec) is refused with a clear error."""
    data = wire.encode(build("identity"), random_layers(n_layers=1))
    header, offset = wire.read_header(data)
    obj = header.to_json()
    obj["codec"] = "future-codec"
    hdr = wire.WireHeader.from_json(obj)
    forged = wire.header_bytes(hdr) + data[offset:]
    with pytest.raises(WireError, match="cannot build.*future-codec"):
        wire.decode(forged)


def test_inspect_reports_failure_without_raising(container):
    report = wire.inspect(container[:-1])
    assert report["checksum"].startswith("FAILED")
    assert report["header"]["codec"] == "int8"


def test_frame_crc_uses_zlib_crc32(container):
    header, offset = wire.read_header(container)
    _, layer, n, crc = struct.unpack_from("<4sIQI", container, offset)
    payload = container[offset + 24: offset + 24 + n]
    assert crc == zlib.crc32(payload) and layer == 0


def test_mixed_dtypes_rejected():
    from kvwire.codecs import LayerKV
    from kvwire.errors import KvwireError

    layers = [LayerKV(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)),
              LayerKV(torch.zeros(1, 2, 4).half(), torch.zeros(1, 2, 4).half())]
    with pytest.raises(KvwireError, match="layer 1 dtype"):
        wire.encode(build("identity"), layers)
