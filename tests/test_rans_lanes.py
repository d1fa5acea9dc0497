"""cachegen's ``entropy="rans_lanes"``: the numpy reference coder (``codecs/rans_lanes.py``), its Triton
kernels (``kernels/cachegen/rans_jit.py`` / ``lanes.py``, in the CPU interpreter here) writing the same
bytes, hostile payloads refused with ``WireError``, and its compression against ``rans``.
"""

import numpy as np
import pytest
import torch

from kvwire.codecs import build, rans_lanes as rl
from kvwire.codecs.base import pack_sections, unpack_sections
from kvwire.codecs.cachegen import _MODE_LANES, _MODE_PACKED, decode_stream, encode_stream
from kvwire.errors import CodecError, WireError

triton = pytest.importorskip("triton")

from kvwire.kernels.base import GpuPayloads, kernel_for  # noqa: E402
from kvwire.kernels.bench import BENCH_CODECS  # noqa: E402
from kvwire.kernels.cachegen import kernel as cg  # noqa: E402
from kvwire.kernels.cachegen import lanes  # noqa: E402
from kvwire.kernels.cachegen.layout import CacheGenSymbols  # noqa: E402
from kvwire.kernels.reference import conformance, cpu_payloads  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LANES_PARAMS = {"entropy": "rans_lanes"}


def laplace_codes(rows, row_len, bits, seed=0, spread=(0.05, 0.4)):
    """Delta-like codes: Laplacian around the zero level, a different width per row (per channel)."""
    rng = np.random.default_rng(seed)
    q = 2 ** (bits - 1) - 1
    scale = rng.uniform(*spread, size=(rows, 1)) * q
    x = np.clip(np.round(rng.laplace(0, 1, (rows, row_len)) * scale), -q, q) + q
    return torch.from_numpy(x.astype(np.uint8))


def uint8_tables(symbols, group, alphabet):
    """``cachegen._count_tables``' uint8 tables for a flat stream cut in groups of ``group`` symbols."""
    n_tables = -(-len(symbols) // group)
    counts = np.zeros((n_tables, alphabet), dtype=np.int64)
    np.add.at(counts, (np.arange(len(symbols)) // group, symbols), 1)
    top = np.maximum(counts.max(axis=1, keepdims=True), 1)
    return np.where(counts > 0, np.maximum((counts * 255 + top // 2) // top, 1), 0)


# ---- the CPU reference --------------------------------------------------------------------------

@pytest.mark.parametrize("n,alphabet,kind", [
    (0, 16, "uniform"), (1, 16, "uniform"), (2, 4, "uniform"), (31, 2, "uniform"), (32, 256, "uniform"),
    (33, 256, "uniform"), (1000, 64, "skewed"), (5000, 16, "skewed"), (777, 8, "one"), (4096, 256, "uniform"),
])
def test_reference_round_trip(n, alphabet, kind):
    rng = np.random.default_rng(n)
    if kind == "uniform":
        sym = rng.integers(0, alphabet, n)
    elif kind == "skewed":
        sym = np.clip(np.round(rng.laplace(alphabet // 2, alphabet / 16, n)), 0, alphabet - 1).astype(np.int64)
    else:  # one symbol: a table with a single entry, every step codes nothing
        sym = np.full(n, alphabet - 1)
    group = max(1, n // 3)
    freq = rl.quantize(uint8_tables(sym, group, alphabet)) if n else np.full((1, alphabet), rl.PROB_SCALE // alphabet)
    body = rl.encode(sym, freq, group)
    assert body == rl.encode(sym, freq, group)  # deterministic
    counts = np.frombuffer(body[4 * rl.LANES:rl.HEADER_BYTES], dtype="<u4")
    assert len(body) == rl.HEADER_BYTES + 2 * int(counts.sum())
    assert (counts <= rl.lane_symbols(n)).all()
    assert np.array_equal(rl.decode(body, n, freq, group, "test"), sym)
    if kind == "one":
        assert counts.sum() == 0


def test_quantize_is_exact_integer_and_same_on_the_device():
    rng = np.random.default_rng(3)
    tables = rng.integers(0, 256, (200, 256)) * (rng.random((200, 256)) < rng.random((200, 1)))
    tables[:, 0] = np.maximum(tables[:, 0], 1)  # no empty row (those are refused before quantizing)
    tables[0] = 0
    tables[0, 7] = 1  # one symbol
    tables[1] = 255  # flat
    tables[2] = 1
    tables[2, 0] = 255  # 255 rare symbols beside a frequent one
    tables[3, :] = 0
    tables[3, 5] = tables[3, 9] = 201
    tables[3, 11] = 1  # a tie: the first maximum takes the remainder
    freq = rl.quantize(tables)
    assert (freq.sum(axis=1) == rl.PROB_SCALE).all()
    assert ((freq > 0) == (tables > 0)).all()
    assert freq[0, 7] == rl.PROB_SCALE
    assert freq[3, 5] > freq[3, 9]
    dev = lanes.quantize_device(torch.from_numpy(tables.astype(np.uint8)).to(DEVICE)).cpu().numpy()
    assert np.array_equal(dev, freq)
    assert not rl.quantize(np.zeros((1, 16), dtype=np.uint8)).any()  # an empty table stays empty


def test_cachegen_stream_modes_and_fallback():
    codes = laplace_codes(64, 300, 5)
    stream = encode_stream(codes, 5, 16, "rans_lanes")
    assert stream[0] == _MODE_LANES
    assert torch.equal(decode_stream(memoryview(stream), 64, 300, 5, 16, "cachegen"), codes)
    tiny = laplace_codes(2, 3, 5)  # tables + lane header cost more than the codes: bit-packed, as "none"
    assert encode_stream(tiny, 5, 16, "rans_lanes") == encode_stream(tiny, 5, 16, "none")
    one = torch.full((40, 200), 3, dtype=torch.uint8)  # a one-symbol alphabet: words-free lanes
    stream = encode_stream(one, 3, 16, "rans_lanes")
    assert stream[0] == _MODE_LANES and len(stream) == 1 + 3 * 8 + rl.HEADER_BYTES
    assert torch.equal(decode_stream(memoryview(stream), 40, 200, 3, 16, "cachegen"), one)
    assert encode_stream(codes, 5, 16, "rans")[0] != _MODE_LANES  # the constriction mode is untouched


def test_compression_close_to_constriction_rans():
    """Same tables, 32 lanes + a 256-byte lane header + 14-bit probabilities vs one 24-bit-precision stack
    coder: measured +0.88 % (4 bits), +0.68 % (5), +0.54 % (6) on these 64 x 1000 streams; bound 1.5 %."""
    pytest.importorskip("constriction")
    for bits in (4, 5, 6):
        codes = laplace_codes(64, 1000, bits, seed=bits)
        rans = len(encode_stream(codes, bits, 16, "rans"))
        lanes_ = len(encode_stream(codes, bits, 16, "rans_lanes"))
        none = len(encode_stream(codes, bits, 16, "none"))
        print(f"{bits} bits: rans {rans} B, rans_lanes {lanes_} B ({lanes_ / rans - 1:+.2%}), packed {none} B")
        assert lanes_ < none and lanes_ <= rans * 1.015


def test_codec_round_trip_and_same_decode_as_rans():
    g = torch.Generator().manual_seed(0)
    kv = [torch.randn(2, 200, 32, generator=g).cumsum(1).to(torch.bfloat16) for _ in range(2)]
    from kvwire.codecs.base import LayerContext, LayerKV
    for layer in range(3):
        ctx = LayerContext(layer, 3, torch.bfloat16, (2, 200, 32))
        decoded = []
        for entropy in ("rans_lanes", "none"):
            codec = build("cachegen", {"entropy": entropy})
            decoded.append(codec.decode_layer(codec.encode_layer(LayerKV(*kv), ctx), ctx))
        assert torch.equal(decoded[0].k, decoded[1].k) and torch.equal(decoded[0].v, decoded[1].v)


# ---- hostile streams (CPU decoder) --------------------------------------------------------------

def _lane_stream():
    codes = laplace_codes(32, 200, 4, seed=7)
    stream = bytearray(encode_stream(codes, 4, 16, "rans_lanes"))
    assert stream[0] == _MODE_LANES
    return codes, stream, 1 + 2 * 16  # tables: 2 of 16 symbols


def _corruptions(stream: bytearray, tables_end: int):
    """(name, corrupted stream bytes, message fragment)."""
    head = tables_end
    words = head + rl.HEADER_BYTES
    out = []
    out.append(("truncated", bytes(stream[:-2]), "add up to"))
    out.append(("truncated header", bytes(stream[:tables_end + 10]), "lane header"))
    out.append(("truncated tables", bytes(stream[:5]), "shorter than its"))
    flipped = bytearray(stream)
    flipped[words + 10] ^= 0x5A
    out.append(("flipped word", bytes(flipped), "corrupted stream"))
    swapped = bytearray(stream)  # two lanes' counts exchanged: the words go to the wrong lanes
    c = np.frombuffer(bytes(stream[head + 4 * rl.LANES:words]), dtype="<u4").copy()
    c[0] += 1
    c[1] -= 1
    swapped[head + 4 * rl.LANES:words] = c.astype("<u4").tobytes()
    out.append(("lane counts moved", bytes(swapped), "corrupted stream"))
    big = bytearray(stream)
    big[head + 4 * rl.LANES:head + 4 * rl.LANES + 4] = (10 ** 9).to_bytes(4, "little")
    out.append(("huge lane count", bytes(big), "claims"))
    state = bytearray(stream)
    state[head:head + 4] = (5).to_bytes(4, "little")
    out.append(("state below 2**16", bytes(state), "state out of range"))
    state2 = bytearray(stream)
    state2[head + 8:head + 12] = (int.from_bytes(state2[head + 8:head + 12], "little") ^ 0x40).to_bytes(4, "little")
    out.append(("state changed", bytes(state2), "corrupted stream"))
    zero = bytearray(stream)
    zero[1:17] = bytes(16)
    out.append(("all-zero table", bytes(zero), "all zero"))
    table = bytearray(stream)
    table[1:17] = bytes([255] * 16)  # a valid but different table: the lanes decode into a wrong end state
    out.append(("other table", bytes(table), "corrupted stream"))
    mode = bytearray(stream)
    mode[0] = 9
    out.append(("unknown mode", bytes(mode), "unknown symbol stream mode"))
    return out


@pytest.mark.parametrize("case", range(11))
def test_hostile_streams_raise_wire_error(case):
    _, stream, tables_end = _lane_stream()
    name, bad, match = _corruptions(stream, tables_end)[case]
    with pytest.raises(WireError, match=match):
        decode_stream(memoryview(bad), 32, 200, 4, 16, "cachegen")


# ---- the Triton kernels (interpreter here) -------------------------------------------------------

def random_cache(layers, heads, seq, dim, seed=0, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    kv = torch.randn(layers, 2, heads, seq, dim, generator=g) * torch.rand(layers, 2, heads, seq, 1,
                                                                           generator=g).pow(3) * 8
    kv[:, 0, :, :, :2] *= 20  # outlier key channels, rows of very different magnitudes (test_kernels_cachegen)
    return kv.to(dtype).to(DEVICE)


def _modes(payloads):
    return [[bytes(s)[0] for s in (secs[2], secs[4], secs[7], secs[9])]
            for secs in (unpack_sections(p, 10, "cachegen") for p in payloads.to_bytes())]


@pytest.mark.parametrize("params,shape,coded", [
    ({}, (3, 2, 37, 64), True),  # layer 0 (6 bits) stays bit-packed, layers 1-2 code their deltas in lanes
    ({"chunk_size": 10, "anchor_bits": 6, "channels_per_table": 5}, (3, 1, 53, 32), False),  # all bit-packed
    ({}, (3, 1, 1, 64), False),  # one token: no deltas
])
def test_kernel_conformance(params, shape, coded):
    kernel = cg.CacheGenKernel("cachegen", {**LANES_PARAMS, **params})
    assert kernel.host_stage is None
    kv = random_cache(*shape, seed=shape[2])
    result = conformance(kernel, kv)
    assert result.identical and result.decode_identical
    assert (_MODE_LANES in sum(_modes(kernel.encode(kv)), [])) == coded


def _symbols(kernel, shape, a_codes, d_codes):
    n, _, h, s, d = shape
    nc = -(-s // kernel.params["chunk_size"])
    ones = torch.full((n, 2, h, d), 0.5, dtype=torch.float16, device=DEVICE)
    return CacheGenSymbols(shape, a_codes.view(n, 2, h, nc, d).to(DEVICE), ones, ones, d_codes.view(
        n, 2, h, d, s - nc).to(DEVICE), ones)


def test_kernels_byte_identical_on_chosen_symbol_streams():
    """Streams the quantizer rarely gives: one symbol everywhere, 8-bit uniform anchors, skewed deltas."""
    kernel = cg.CacheGenKernel("cachegen", {**LANES_PARAMS, "chunk_size": 8, "bits_early": 3, "bits_mid": 8,
                                            "bits_late": 4})
    shape = (3, 2, 2, 120, 32)
    n, _, h, s, d = shape
    nc, nd = 15, 105
    g = torch.Generator().manual_seed(1)
    a_codes = torch.randint(0, 256, (n, 2, h * nc * d), generator=g, dtype=torch.uint8)
    a_codes[1] = 17  # layer 1's anchors: one symbol
    d_codes = torch.stack([laplace_codes(2 * h * d, nd, b, seed=b).view(2, -1) for b in (3, 8, 4)])
    d_codes[2, 1] = 7  # one layer's V deltas: one symbol
    sym = _symbols(kernel, (n, 2, h, s, d), a_codes, d_codes)
    got = lanes.encode_payloads(kernel, sym)
    want = kernel.host_encode(sym)  # the CPU codec's encode_stream on the same symbols
    assert got.to_bytes() == want
    modes = _modes(got)
    assert modes[1][0] == modes[1][2] == _MODE_LANES and modes[0][0] == _MODE_PACKED  # 8-bit uniform: packed
    back = kernel.decode(got, shape, torch.float32)
    assert torch.equal(back, kernel.decode_symbols(kernel.host_decode(got, shape), torch.float32))
    again = kernel.decode(GpuPayloads.from_bytes(want, DEVICE), shape, torch.float32, check=False)
    assert torch.equal(back, again)


def _layer_with(parts, layer, section, edit):
    """Payloads (host bytes per layer) with one section of one layer replaced by ``edit(bytes)``."""
    parts = list(parts)
    secs = [bytes(x) for x in unpack_sections(parts[layer], 10, "cachegen")]
    secs[section] = edit(bytearray(secs[section]))
    parts[layer] = pack_sections(secs)
    return GpuPayloads.from_bytes(parts, DEVICE)


def test_kernel_decode_refuses_hostile_payloads():
    kernel = cg.CacheGenKernel("cachegen", LANES_PARAMS)
    kv = random_cache(3, 2, 37, 64, seed=37)
    shape = tuple(kv.shape)
    good = kernel.encode(kv)
    assert _modes(good)[2][1] == _MODE_LANES  # layer 2, K deltas: 8 tables of 16 symbols
    parts = good.to_bytes()

    def words_at(b):
        return 1 + 8 * 16 + rl.HEADER_BYTES

    def flip(b):
        b[words_at(b) + 6] ^= 0x33
        return bytes(b)

    def counts_moved(b):
        at = 1 + 8 * 16 + 4 * rl.LANES
        c = np.frombuffer(bytes(b[at:at + 8]), dtype="<u4").astype(np.int64) + [1, -1]
        b[at:at + 8] = c.astype("<u4").tobytes()
        return bytes(b)

    def huge_count(b):
        at = 1 + 8 * 16 + 4 * rl.LANES
        b[at:at + 4] = (1 << 31).to_bytes(4, "little")
        return bytes(b)

    def zero_table(b):
        b[1:17] = bytes(16)
        return bytes(b)

    def state(b):
        at = 1 + 8 * 16
        b[at + 4:at + 8] = (int.from_bytes(b[at + 4:at + 8], "little") ^ 0x100).to_bytes(4, "little")
        return bytes(b)

    cases = [(lambda b: bytes(b[:-2]), "add up to"), (lambda b: bytes(b[:100]), "shorter than"),
             (flip, "corrupted stream"), (counts_moved, "corrupted stream"), (huge_count, "claims"),
             (zero_table, "all zero"), (state, "corrupted stream"), (lambda b: bytes([9]) + bytes(b[1:]), "unknown")]
    for edit, match in cases:
        with pytest.raises(WireError, match=match):
            kernel.decode(_layer_with(parts, 2, 4, edit), shape, kv.dtype)
    with pytest.raises(WireError, match="scale section"):
        kernel.decode(_layer_with(parts, 1, 3, lambda b: bytes(b[:-2])), shape, kv.dtype)
    with pytest.raises(WireError, match="sections"):
        kernel.decode(GpuPayloads(good.data[4:], tuple(max(0, o - 4) for o in good.offsets)), shape, kv.dtype)


def test_registered_benched_and_a_parameter_choice():
    assert BENCH_CODECS["cachegen_lanes"] == ("cachegen", {"entropy": "rans_lanes"})
    assert isinstance(kernel_for("cachegen", {"entropy": "rans_lanes"}), cg.CacheGenKernel)
    with pytest.raises(CodecError):
        build("cachegen", {"entropy": "lanes"})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compiled_lane_kernels_on_the_gpu(dtype):
    """The compiled kernels (Triton on the GPU) write the CPU reference's bytes; decode with and without checks."""
    kernel = cg.CacheGenKernel("cachegen", LANES_PARAMS)
    for shape in ((4, 3, 1000, 64), (3, 1, 777, 256), (4, 8, 512, 128)):
        kv = random_cache(*shape, seed=shape[2], dtype=dtype)
        result = conformance(kernel, kv)
        assert result.identical and result.decode_identical
        fast = kernel.encode(kv, check=False)
        assert fast.to_bytes() == cpu_payloads(kernel.codec, kv)
        assert torch.equal(kernel.decode(fast, tuple(kv.shape), dtype, check=False),
                           kernel.decode(fast, tuple(kv.shape), dtype))
