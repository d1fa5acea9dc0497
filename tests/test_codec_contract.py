"""The contract every registered codec keeps, checked for all of them with default parameters.

Codec-specific error bounds live in each codec's own test file; here: round trip of shape and
dtype (or kept tokens with positions), ratio from the real container bytes, damaged payloads
raise WireError, NaN/Inf raise KVError for lossy codecs, and the edge cases stay finite.
"""

import pytest
import torch

from conftest import random_layers
from kvwire import wire
from kvwire.codecs import LayerKV, build
from kvwire.codecs.registry import BYTE_STAGES, TENSOR_CODECS
from kvwire.errors import CodecError, KVError, WireError

ALL = sorted(TENSOR_CODECS) + sorted(BYTE_STAGES)


def synthetic_stats(layers, obs=32, seed=0):
    """Positive attention statistics of the shapes extraction stores (for token-selection codecs)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for layer in layers:
        h, s, _ = layer.k.shape
        o = min(obs, s)
        out.append({"attn_sum": torch.rand(h, s, generator=g) * s,
                    "obs_attn": torch.softmax(torch.randn(h, o, s, generator=g), dim=-1)})
    return out


def round_trip(name, layers):
    codec = build(name)
    data = wire.encode(codec, layers, stats=synthetic_stats(layers))
    return codec, data, wire.decode(data)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_round_trip_and_ratio(name, dtype):
    layers = random_layers(n_layers=4, heads=2, seq=160, dim=64, dtype=dtype)
    codec, data, (header, out) = round_trip(name, layers)
    raw = sum(layer.raw_bytes for layer in layers)
    assert wire.inspect(data)["ratio"] == raw / len(data)
    for a, b in zip(layers, out):
        assert b.k.dtype == dtype and b.v.dtype == dtype
        assert b.k.shape[0] == a.k.shape[0] and b.k.shape[2] == a.k.shape[2] and b.k.shape == b.v.shape
        if b.positions is None:
            assert b.k.shape == a.k.shape
        else:  # dropped tokens are removed, never zero-filled
            assert b.positions.dtype == torch.int64 and b.positions.numel() == b.k.shape[1]
            assert torch.all(b.positions[1:] > b.positions[:-1]) and int(b.positions.max()) < a.k.shape[1]
            assert torch.equal(b.k.float(), a.k.float().index_select(1, b.positions)) or not codec.lossless
        assert torch.isfinite(b.k).all() and torch.isfinite(b.v).all()
        if codec.lossless:
            assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v)


@pytest.mark.parametrize("name", sorted(TENSOR_CODECS))
def test_damaged_payload_raises_wire_error(name):
    layers = random_layers(n_layers=1, heads=2, seq=160, dim=64)
    codec = build(name)
    stats = synthetic_stats(layers)
    header = wire.make_header(codec, layers)
    payload = codec.encode_layer(layers[0], header.context(0, stats[0]))
    for bad in (payload[: len(payload) // 2], payload[:-1], b"", b"\x00" * 7):
        with pytest.raises(WireError):
            codec.decode_layer(bad, header.context(0))


@pytest.mark.parametrize("name", [n for n in sorted(TENSOR_CODECS) if not TENSOR_CODECS[n].lossless])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_lossy_codecs_refuse_nan_inf(name, bad):
    layers = random_layers(n_layers=1, heads=2, seq=160, dim=64, dtype=torch.float32)
    k = layers[0].k.clone()
    k[1, 150, 3] = bad
    with pytest.raises(KVError):
        wire.encode(build(name), [LayerKV(k, layers[0].v)], stats=synthetic_stats(layers))


EDGE_CASES = {
    "seq=1": LayerKV(torch.randn(2, 1, 64).half(), torch.randn(2, 1, 64).half()),
    "seq=37": LayerKV(torch.randn(2, 37, 64).bfloat16(), torch.randn(2, 37, 64).bfloat16()),
    "zeros": LayerKV(torch.zeros(2, 40, 64), torch.zeros(2, 40, 64)),
    "constant": LayerKV(torch.full((2, 40, 64), 0.75).half(), torch.full((2, 40, 64), -3.0).half()),
    "fp16 extremes": LayerKV(torch.tensor([65504.0, -65504.0, 6e-5, -6e-5]).repeat(2, 40, 16).half(),
                             torch.tensor([1.0, -1.0, 6e-5, 0.0]).repeat(2, 40, 16).half()),
}


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
@pytest.mark.parametrize("name", sorted(TENSOR_CODECS))
def test_edge_cases_finite_or_clear_error(name, case):
    layer = EDGE_CASES[case]
    try:
        _, _, (_, (out,)) = round_trip(name, [layer])
    except CodecError as exc:  # allowed: a clear refusal naming what to change
        assert str(exc)
        return
    assert torch.isfinite(out.k).all() and torch.isfinite(out.v).all()
    if case == "zeros":
        assert torch.count_nonzero(out.k) == 0 and torch.count_nonzero(out.v) == 0
