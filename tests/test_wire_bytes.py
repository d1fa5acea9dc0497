"""The container's bytes are fixed: a cache built from integers encodes to the same bytes (SHA-256)
as before the byte path was rewritten (issue 31), for the identity, byte-stage and quantizing codecs.
A change here is a wire-format change: bump ``wire.VERSION`` and keep reading the old one."""

import hashlib
import zlib

import pytest
import torch

from kvwire import wire
from kvwire.codecs import LayerKV, build
from kvwire.errors import WireError


def fixed_cache(n_layers: int = 3, heads: int = 2, seq: int = 40, dim: int = 16) -> list[LayerKV]:
    """bf16 values from an integer recurrence (no RNG, no float math): sign, exponent in [118, 129]
    (magnitudes 2^-9 .. 4), random mantissa; so any codec sees the same input on any platform."""
    n = n_layers * 2 * heads * seq * dim
    x = (torch.arange(n, dtype=torch.int64) * 2654435761 + 12345) % (1 << 31)
    x = (x * 1103515245 + 12345) % (1 << 31)
    sign, exp, man = (x >> 20) & 1, 118 + (x >> 8) % 12, x & 0x7F
    bits = ((sign << 15) | (exp << 7) | man).to(torch.int16)
    t = bits.view(torch.bfloat16).reshape(n_layers, 2, heads, seq, dim)
    return [LayerKV(t[i, 0].clone(), t[i, 1].clone()) for i in range(n_layers)]


# computed with the code before the issue-31 byte path (commit f6f1695)
EXPECTED = {
    "identity": "02117559099387396b3a59622e28f78148e0b8382a9b5b0e0741e6efd59f421a",
    "lz4": "8b47af75f9bd44845b7cde738ba2bf6c2b16e508f195026a208e678c91ccd981",
    "zstd": "d7c2b68b6524082b2bb5993d80854d00a693d5954f17bf7f48a85c8bb193be45",
    "int8": "6f37c10ff8dbfc8a8dd06759f4acbfa2ee3bab61784ce76d4c6b0732aa603689",
    "int8+lz4": "d4bf8dfd74a769abf42093e355323a052b47c7b8c7b34197e0bfcb7f2274ad93",
    "int8+zstd": "13db810a217ab60c77f11d35456c8c532590080521d0966ed39ce2628e6a9ac2",
    "fp8_e4m3": "ecb827eccb137da8c546572056b71a323108276b77c54287e4d1fa42587946fd",
    "kivi2": "119eff8c9f33af960f45a7f1628c0c55737a1b844e05b3f2f793cf17a3a4a68b",
    "int4+lz4": "7de242043943f43a4336bba42515e71ed3d5c7d425322ceb392267523965c347",
    "k8v4": "fa683bc2504bacab8ebff4ca1391a24492f28f4d4cc78bf3e04e10ad3399bd8d",
    "cachegen": "7bd61d2274e1e7727c7f83cdf95d430750669fd3e40701d0c5716d1ad2a1ff03",
    "identity+lz4": "0540961b5ba73b1bcf9aede1124ea4823d35ca90a93db4e0e809f3306a616059",
    "identity@float32": "a12dd9cb624222da960d3a5f1ac7dbd58333fad9040304c2dd41fff189ed7ee6",
    "lz4@float32": "8a2aecb3fb89db2072b9f016e13ddacd5db827ed5355680688f749328c1adebc",
    "identity@float16": "1cf488105e1f11bc4071fd342bc509105f8525e2631dffac562002af6c9fbc44",
    "lz4@float16": "b1cb1cadceb44edaac808b3700c654ee9b31423d8ea484980fc2f2a3c44b9376",
}


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_container_bytes_unchanged(key):
    codec, _, dtype = key.partition("@")
    layers = [LayerKV(x.k.to(getattr(torch, dtype or "bfloat16")), x.v.to(getattr(torch, dtype or "bfloat16")))
              for x in fixed_cache()]
    data = wire.encode(build(codec), layers, {"model": "m", "prompt_id": "p0"})
    assert hashlib.sha256(data).hexdigest() == EXPECTED[key]
    pieces = list(wire.iter_encode(build(codec), layers, {"model": "m", "prompt_id": "p0"}))
    assert b"".join(pieces) == data
    header, decoded = wire.decode(data)
    if build(codec).lossless:
        for a, b in zip(layers, decoded):
            assert a.k.dtype == b.k.dtype and torch.equal(a.k, b.k) and torch.equal(a.v, b.v)
    assert wire.decode(bytearray(data))[0].shapes == header.shapes
    assert wire.decode(memoryview(data))[0].shapes == header.shapes


@pytest.fixture
def parallel_crcs(monkeypatch):
    """Payload CRCs on 2 threads even for a small container."""
    monkeypatch.setattr(wire, "_PARALLEL_CRC_BYTES", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("codec", ["identity", "lz4", "int8"])
def test_parallel_crcs_give_the_same_bytes(parallel_crcs, codec):
    data = wire.encode(build(codec), fixed_cache(n_layers=5), {"model": "m"})
    assert data == b"".join(wire.iter_encode(build(codec), fixed_cache(n_layers=5), {"model": "m"}))
    assert wire.decode(data)[0].n_layers == 5
    assert wire.crc32_many([b"ab", [b"a", b"b"], memoryview(b"xyz")]) == [zlib.crc32(b"ab")] * 2 + [zlib.crc32(b"xyz")]


def test_parallel_crcs_report_the_first_damage_in_order(parallel_crcs):
    data = wire.encode(build("identity"), fixed_cache(n_layers=5))
    _, first = wire.read_header(data)
    sizes = [len(f.payload) for f in wire.read_frames(data)[1]]

    def payload_at(i: int) -> int:  # frame i's payload: after its 24-byte head (and every frame before)
        return first + 24 * (i + 1) + sum(sizes[:i])

    damaged = bytearray(data)
    damaged[payload_at(1) + 7] ^= 1
    damaged[payload_at(3) + 5] ^= 1
    with pytest.raises(WireError, match="frame 1 payload checksum mismatch"):
        wire.decode(bytes(damaged))
    damaged[payload_at(4) - 3] ^= 1  # frame 4's head CRC: the earlier payload is still reported first
    with pytest.raises(WireError, match="frame 1 payload checksum mismatch"):
        wire.decode(bytes(damaged))
    damaged[payload_at(1) + 7] ^= 1
    damaged[payload_at(3) + 5] ^= 1
    with pytest.raises(WireError, match="frame 4 header corrupted"):
        wire.decode(bytes(damaged))


def test_the_lz4_stage_refuses_trailing_bytes_and_truncation_read_in_place():
    import json

    from kvwire import fuzz

    data = wire.encode(build("lz4"), fixed_cache(n_layers=1))
    header, (payload,) = fuzz.split(data)
    with pytest.raises(WireError, match="lz4 stage: 3 unexpected byte"):
        wire.decode(fuzz.reseal(json.dumps(header), [payload + b"xyz"]))
    with pytest.raises(WireError, match="lz4 stage: truncated"):
        wire.decode(fuzz.reseal(json.dumps(header), [payload[:-3]]))
    with pytest.raises(WireError, match="lz4 stage: corrupted"):
        wire.decode(fuzz.reseal(json.dumps(header), [payload[:7] + bytes(len(payload) - 7)]))
