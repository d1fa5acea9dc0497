"""cachegen (anchor/delta + layer-dependent bits + rANS) and svd_runtime / svd_runtime_int4.

Error bounds used below (derived in the codecs' docstrings):

- cachegen, per element: an anchor token (position t % chunk_size == 0) is within a_s / 2 of the input,
  a_s = (max - min of the channel's anchors) / (2**anchor_bits - 1); any other token is within d_s / 2,
  d_s = (max_t |x_t - x_anchor(t)| + a_s / 2 + zero-point rounding) / (2**(bits-1) - 1), the delta being
  taken from the *decoded* anchor. Plus fp16 storage of scales / zero points (relative 2**-11, we allow
  2**-10) and the rounding of the result to the output dtype.
- svd_runtime (Eckart-Young): ||X - X_hat||_F = sqrt(sum_{i>r} sigma_i^2) up to factor rounding:
  | err - tail | <= u * ||sigma_{1..r}|| + sigma_1 * u * sqrt(r) (+ subnormal floors, fp32 SVD and output
  rounding), u the factor dtype's unit roundoff, because ||dA B||_F <= ||dA||_F and ||A dB||_F <= sigma_1 ||dB||_F.
- svd_runtime_int4: tail <= err <= tail + eA + sigma_1 eB + eA eB / sigma_1, eA = sqrt(seq) ||sigma_{1..r}|| / 14
  and eB = sqrt(r * head_dim) / 14 (int4 symmetric: half a step = absmax / 14, |U|, |V| entries <= 1).
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import random_layers
from kvwire import wire
from kvwire.codecs import LayerKV, build
from kvwire.codecs.cachegen import layer_tier
from kvwire.errors import CodecError, KVError, WireError

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
CODECS = [("cachegen", {}), ("cachegen", {"entropy": "none"}), ("cachegen", {"chunk_size": 5, "channels_per_table": 3}),
          ("svd_runtime", {}), ("svd_runtime", {"rank": 4, "factor_dtype": "bfloat16"}),
          ("svd_runtime_int4", {}), ("svd_runtime_int4", {"rank": 3, "group_size": 7})]
CG_DEFAULTS = {"chunk_size": 16, "anchor_bits": 8, "bits_early": 6, "bits_mid": 5, "bits_late": 4}


def walk_layers(n_layers=3, heads=2, seq=200, dim=32, dtype=torch.bfloat16, seed=0):
    """Smooth, correlated token sequences: a Gaussian random walk along tokens (plus an outlier key channel)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_layers):
        k = (0.05 * torch.randn(heads, seq, dim, generator=g)).cumsum(1) + torch.randn(heads, 1, dim, generator=g)
        v = (0.05 * torch.randn(heads, seq, dim, generator=g)).cumsum(1)
        k[..., 1] *= 30.0
        out.append(LayerKV(k.to(dtype), v.to(dtype)))
    return out


def ratio(name, params, layers):
    data = wire.encode(build(name, params), layers)
    return sum(layer.raw_bytes for layer in layers) / len(data)


# ---- common: round trip, ratio from bytes --------------------------------------------------

@pytest.mark.parametrize("name,params", CODECS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_shape_dtype_and_ratio(name, params, dtype):
    layers = random_layers(dtype=dtype, seq=37, dim=16)
    data = wire.encode(build(name, params), layers)
    header, out = wire.decode(data)
    raw = sum(layer.raw_bytes for layer in layers)
    assert header.raw_bytes == raw
    assert wire.inspect(data)["ratio"] == raw / len(data)
    for a, b in zip(layers, out):
        assert b.k.shape == a.k.shape and b.v.shape == a.v.shape
        assert b.k.dtype == dtype and b.v.dtype == dtype and b.positions is None
        assert torch.isfinite(b.k).all() and torch.isfinite(b.v).all()


@pytest.mark.parametrize("name,params", CODECS)
def test_encoding_is_deterministic(name, params):
    layers = walk_layers(seq=50)
    assert wire.encode(build(name, params), layers) == wire.encode(build(name, params), layers)


# ---- cachegen ------------------------------------------------------------------------------

def cachegen_bound(x: torch.Tensor, dtype: torch.dtype, bits: int, chunk: int = 16, anchor_bits: int = 8):
    """The analytical per-element bound for one [heads, seq, dim] tensor (see module docstring)."""
    x = x.float()
    s = x.shape[1]
    t = torch.arange(s)
    anchor_of = (t // chunk) * chunk
    a = x[:, ::chunk]
    a_step = (a.amax(1, keepdim=True) - a.amin(1, keepdim=True)) / (2**anchor_bits - 1)
    # fp16 scales and zero points round to 2^-11 relative, or, below fp16's normal range (2^-14), to half
    # the subnormal spacing 2^-24 -- an absolute error the codes multiply (up to 2^bits - 1 of them)
    sub = 2.0**-25
    zero_round = a.amin(1, keepdim=True).abs() * 2.0**-10 + sub  # fp16 zero point
    a_err = a_step * (1 + 2.0**-10) / 2 + zero_round + (2**anchor_bits - 1) * sub
    dev = (x - x[:, anchor_of]).abs().amax(1, keepdim=True)
    d_step = (dev + a_err) / (2 ** (bits - 1) - 1)
    d_err = d_step * (1 + 2.0**-10) / 2 + (2 ** (bits - 1) - 1) * sub
    bound = torch.where((t % chunk == 0)[None, :, None], a_err, d_err)
    eps = torch.finfo(dtype).eps
    return bound + (x.abs() + bound) * eps + x.abs() * 2.0**-22 + 1e-30


@pytest.mark.parametrize("outlier", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("entropy", ["rans", "none"])
def test_cachegen_error_within_bound(outlier, dtype, entropy):
    for layers in (random_layers(n_layers=3, seq=45, dim=16, dtype=dtype, outlier=outlier),
                   walk_layers(n_layers=3, seq=45, dim=16, dtype=dtype)):
        _, out = wire.decode(wire.encode(build("cachegen", {"entropy": entropy}), layers))
        for i, (a, b) in enumerate(zip(layers, out)):
            bits = (6, 5, 4)[i]  # layer thirds of a 3-layer cache
            for x, y in ((a.k, b.k), (a.v, b.v)):
                assert torch.all((x.float() - y.float()).abs() <= cachegen_bound(x, dtype, bits))


def test_layer_tiers_and_bits_schedule():
    assert [layer_tier(i, 30) for i in (0, 9, 10, 19, 20, 29)] == [0, 0, 1, 1, 2, 2]
    assert [layer_tier(i, 3) for i in range(3)] == [0, 1, 2]
    assert layer_tier(0, 1) == 0
    # the same tensor in every layer: deeper layers get fewer bins, hence a larger error and fewer bytes
    one = walk_layers(n_layers=1, seq=128)[0]
    data = wire.encode(build("cachegen", {"entropy": "none"}), [one] * 3)
    _, out = wire.decode(data)
    errs = [float((one.v.float() - o.v.float()).abs().mean()) for o in out]
    sizes = [f["bytes"] for f in wire.inspect(data)["frames"]]
    assert errs[0] < errs[1] < errs[2] and sizes[0] > sizes[1] > sizes[2]


@pytest.mark.parametrize("data", ["walk", "random_layers"])
def test_entropy_coding_beats_bitpacking_of_the_same_symbols(data):
    layers = (walk_layers(seq=256, dim=64) if data == "walk"
              else random_layers(n_layers=3, heads=2, seq=256, dim=64))
    coded, packed = ratio("cachegen", {}, layers), ratio("cachegen", {"entropy": "none"}, layers)
    print(f"cachegen on {data}: ratio rans {coded:.3f} vs bit-packed {packed:.3f}")
    assert coded > packed * 1.05
    # the entropy stage is lossless: both decode to bit-identical tensors
    _, a = wire.decode(wire.encode(build("cachegen"), layers))
    _, b = wire.decode(wire.encode(build("cachegen", {"entropy": "none"}), layers))
    assert all(torch.equal(x.k, y.k) and torch.equal(x.v, y.v) for x, y in zip(a, b))


def test_delta_coding_pays_on_smooth_tokens():
    """At the same compressed size, deltas from an anchor beat quantizing the raw tokens when tokens are
    correlated (chunk_size=1 makes every token an anchor: plain per-channel quantization)."""
    layers = walk_layers(n_layers=1, seq=256, dim=64)
    delta, raw = {"bits_early": 4, "chunk_size": 8}, {"chunk_size": 1, "anchor_bits": 4}

    def err(params):
        _, out = wire.decode(wire.encode(build("cachegen", params), layers))
        return float((layers[0].v.float() - out[0].v.float()).norm())

    assert ratio("cachegen", delta, layers) >= 0.98 * ratio("cachegen", raw, layers)
    assert err(delta) < 0.6 * err(raw)


def test_cachegen_tiny_layers_fall_back_to_packing():
    """seq=2: the frequency tables would cost more than the codes; rans then stores the packed form."""
    layers = random_layers(n_layers=1, seq=2, dim=8)
    assert ratio("cachegen", {}, layers) == ratio("cachegen", {"entropy": "none"}, layers)


def test_cachegen_scale_overflow_names_the_parameter():
    layer = LayerKV(torch.tensor([[[65504.0], [-65504.0]]]).half(), torch.zeros(1, 2, 1).half())
    with pytest.raises(CodecError, match="scale_dtype=float32"):
        wire.encode(build("cachegen", {"bits_early": 2}), [layer])
    _, (out,) = wire.decode(wire.encode(build("cachegen", {"bits_early": 2, "scale_dtype": "float32"}), [layer]))
    assert torch.isfinite(out.k).all()


# ---- svd -----------------------------------------------------------------------------------

_U = {"float16": (2.0**-11, 2.0**-25), "bfloat16": (2.0**-8, 0.0), "float32": (2.0**-24, 0.0)}


def svd_check(x: torch.Tensor, y: torch.Tensor, rank: int, factor_dtype: str | None, group: int | None = None):
    """Assert the Eckart-Young error of one [heads, seq, dim] tensor (bounds in the module docstring)."""
    h, s, d = x.shape
    r = min(rank, s, d)
    xd, yd = x.double(), y.double()
    sig = torch.linalg.svdvals(xd)  # [h, min(s, d)]
    eps_out = torch.finfo(y.dtype).eps
    for i in range(h):
        tail = float(sig[i, r:].norm())
        top, s1 = float(sig[i, :r].norm()), float(sig[i, 0])
        xn = float(xd[i].norm())
        err = float((xd[i] - yd[i]).norm())
        rounding = 2 * eps_out * xn + 1e-5 * xn  # output dtype + fp32 SVD (backward stable)
        if factor_dtype is not None:
            u, floor = _U[factor_dtype]
            ea = u * top + s1 * floor * math.sqrt(s * r)
            eb = u * math.sqrt(r) + floor * math.sqrt(r * d)
        else:  # int4, symmetric, half a step per entry, fp16 scales
            ea = math.sqrt(s) * top / 14 * (1 + 2.0**-9) + s1 * 2.0**-22 * math.sqrt(s * r)
            eb = math.sqrt(r * d) / 14 * (1 + 2.0**-9) + 2.0**-22 * math.sqrt(r * d)
        upper = tail + ea + s1 * eb + ea * eb + rounding
        lower = tail - rounding if factor_dtype is None else tail - (ea + s1 * eb + ea * eb + rounding)
        assert lower <= err <= upper, (i, err, tail, upper)


@pytest.mark.parametrize("outlier", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("factor_dtype", ["float16", "bfloat16", "float32"])
def test_svd_error_is_eckart_young_tail(outlier, dtype, factor_dtype):
    layers = random_layers(n_layers=2, heads=3, seq=40, dim=16, dtype=dtype, outlier=outlier) + walk_layers(
        n_layers=1, heads=3, seq=40, dim=16, dtype=dtype)
    for rank in (1, 5):
        _, out = wire.decode(wire.encode(build("svd_runtime", {"rank": rank, "factor_dtype": factor_dtype}), layers))
        for a, b in zip(layers, out):
            svd_check(a.k, b.k, rank, factor_dtype)
            svd_check(a.v, b.v, rank, factor_dtype)


@pytest.mark.parametrize("outlier", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_svd_int4_error_within_bound(outlier, dtype):
    layers = random_layers(n_layers=2, heads=2, seq=50, dim=32, dtype=dtype, outlier=outlier) + walk_layers(
        n_layers=1, heads=2, seq=50, dim=32, dtype=dtype)
    for rank, group in ((4, 64), (8, 16)):
        _, out = wire.decode(wire.encode(build("svd_runtime_int4", {"rank": rank, "group_size": group}), layers))
        for a, b in zip(layers, out):
            svd_check(a.k, b.k, rank, None)
            svd_check(a.v, b.v, rank, None)


def test_svd_rank_is_clamped_and_full_rank_is_exact_up_to_rounding():
    layers = random_layers(n_layers=1, heads=2, seq=12, dim=16, dtype=torch.float32)
    ctx = wire.make_header(build("svd_runtime"), layers).context(0)
    big = build("svd_runtime", {"rank": 1000}).encode_layer(layers[0], ctx)
    assert big == build("svd_runtime", {"rank": 12}).encode_layer(layers[0], ctx)  # clamped to min(seq, dim)
    _, (out,) = wire.decode(wire.encode(build("svd_runtime", {"rank": 1000}), layers))
    svd_check(layers[0].k, out.k, 1000, "float16")
    assert float((layers[0].k - out.k).norm() / layers[0].k.norm()) < 1e-3  # fp16 factor rounding only


def test_svd_low_rank_input_is_recovered():
    g = torch.Generator().manual_seed(3)
    k = torch.randn(2, 64, 3, generator=g) @ torch.randn(2, 3, 32, generator=g)  # rank 3 per head
    layer = LayerKV(k, k.flip(1).contiguous())
    _, (out,) = wire.decode(wire.encode(build("svd_runtime", {"rank": 3}), [layer]))
    assert float((out.k - k).norm() / k.norm()) < 2e-3
    assert ratio("svd_runtime", {"rank": 3}, [layer]) > 5


def test_svd_ratios_match_the_factor_sizes():
    layers = random_layers(n_layers=1, heads=3, seq=256, dim=64)
    payload = build("svd_runtime", {"rank": 16}).encode_layer(
        layers[0], wire.make_header(build("svd_runtime"), layers).context(0))
    factors = 2 * 3 * (256 * 16 + 16 * 64) * 2 + 2 * 3 * 2 * 4  # fp16 A, B and fp32 scales, K and V
    assert len(payload) == factors + 4 + 6 * 8  # + the section table
    assert ratio("svd_runtime_int4", {}, layers) > 3 * ratio("svd_runtime", {}, layers)


# ---- edge cases and robustness (all codecs) ------------------------------------------------

_SIGN = 1.0 - 2.0 * (torch.arange(17) % 2)  # +1, -1, +1, ...: deltas of 2 * 65504 from each anchor
_ALTERNATING = torch.stack([65504.0 * _SIGN, -65504.0 * _SIGN, 6e-5 * _SIGN, torch.zeros(17)], dim=-1)[None]
EDGE = [
    LayerKV(torch.randn(1, 1, 8).half(), torch.randn(1, 1, 8).half()),  # seq = 1
    LayerKV(torch.zeros(2, 5, 8), torch.zeros(2, 5, 8)),  # all zeros
    LayerKV(torch.full((2, 19, 8), 3.5).bfloat16(), torch.full((2, 19, 8), -2.0).bfloat16()),  # constants
    LayerKV(torch.tensor([[[65504.0, -65504.0, 1e-7, 0.0]]]).half(),
            torch.tensor([[[6e-5, -6e-5, 1.0, -1.0]]]).half()),  # fp16 extremes
    LayerKV(_ALTERNATING.half(), _ALTERNATING.flip(-1).half()),  # fp16 extremes flipping sign every token
]


@pytest.mark.parametrize("name,params", CODECS)
def test_edge_cases(name, params):
    c = build(name, params)
    for layer in EDGE:
        _, (out,) = wire.decode(wire.encode(c, [layer]))
        assert out.k.shape == layer.k.shape and out.k.dtype == layer.k.dtype
        assert torch.isfinite(out.k).all() and torch.isfinite(out.v).all()
    _, (out,) = wire.decode(wire.encode(c, [EDGE[1]]))
    assert torch.equal(out.k, EDGE[1].k) and torch.equal(out.v, EDGE[1].v)  # zeros stay exact zeros
    _, (out,) = wire.decode(wire.encode(c, [EDGE[2]]))
    if name == "cachegen":
        assert torch.equal(out.k, EDGE[2].k) and torch.equal(out.v, EDGE[2].v)  # constants decode exactly
    else:  # a constant is rank 1: exact up to factor rounding
        assert torch.allclose(out.k.float(), EDGE[2].k.float(), rtol=0.02)


@pytest.mark.parametrize("name,params", CODECS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_refuses_nan_inf(name, params, bad):
    layer = random_layers(n_layers=1)[0]
    v = layer.v.clone()
    v[1, 3, 2] = bad
    with pytest.raises(KVError, match="NaN/Inf.*layer 0 values"):
        wire.encode(build(name, params), [LayerKV(layer.k, v)])


@pytest.mark.parametrize("name,params", CODECS)
def test_truncated_and_garbled_payload_raise_wire_error(name, params):
    c = build(name, params)
    layers = walk_layers(n_layers=1, seq=120, dim=16)
    ctx = wire.make_header(c, layers).context(0)
    payload = c.encode_layer(layers[0], ctx)
    for bad in (payload[:-3], payload[:-1], b"\x01", b"", payload + b"\x00"):
        with pytest.raises(WireError):
            c.decode_layer(bad, ctx)
    # random corruption of the body (a buggy sender behind a valid CRC): WireError or a well-formed layer
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        buf = bytearray(payload)
        for pos in torch.randint(4, len(buf), (3,), generator=g).tolist():
            buf[pos] = int(torch.randint(0, 256, (1,), generator=g))
        try:
            out = c.decode_layer(bytes(buf), ctx)
        except WireError:
            continue
        assert out.k.shape == layers[0].k.shape and torch.isfinite(out.k).all() and torch.isfinite(out.v).all()


def test_cachegen_corrupted_rans_stream_is_detected():
    c = build("cachegen")
    layers = walk_layers(n_layers=1, seq=200, dim=32)
    ctx = wire.make_header(c, layers).context(0)
    payload = bytearray(c.encode_layer(layers[0], ctx))
    payload[-1] ^= 0xFF  # the last word of V's delta stream: the ANS state no longer unwinds to empty
    with pytest.raises(WireError):
        c.decode_layer(bytes(payload), ctx)


@pytest.mark.parametrize("name,params,match", [
    ("cachegen", {"entropy": "zstd"}, "must be one of"),
    ("cachegen", {"bits_mid": 9}, "<= 8"),
    ("cachegen", {"chunk_size": 0}, ">= 1"),
    ("svd_runtime", {"rank": 0}, ">= 1"),
    ("svd_runtime", {"factor_dtype": "int8"}, "must be one of"),
    ("svd_runtime_int4", {"group_size": 0}, ">= 1"),
])
def test_bad_params_name_the_problem(name, params, match):
    with pytest.raises(CodecError, match=match):
        build(name, params)


# ---- property test -------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(
    heads=st.integers(1, 4), seq=st.integers(1, 70), dim=st.sampled_from([8, 16, 64, 96, 128, 256]),
    dtype=st.sampled_from(DTYPES), scale=st.floats(1e-2, 1e2), smooth=st.booleans(),
    codec=st.sampled_from(["cachegen", "svd_runtime", "svd_runtime_int4"]),
    chunk=st.integers(1, 20), bits=st.integers(3, 8), entropy=st.sampled_from(["rans", "none"]),
    cpt=st.integers(1, 40), rank=st.integers(1, 20), group=st.sampled_from([8, 32, 64]),
    fdt=st.sampled_from(["float16", "float32"]),
)
def test_property_round_trip(heads, seq, dim, dtype, scale, smooth, codec, chunk, bits, entropy, cpt, rank, group, fdt):
    x = torch.randn(2, heads, seq, dim)
    if smooth:
        x = 0.1 * x.cumsum(2)
    layer = LayerKV((x[0] * scale).to(dtype), (x[1] * scale).to(dtype))
    params = {"cachegen": {"chunk_size": chunk, "bits_early": bits, "entropy": entropy, "channels_per_table": cpt},
              "svd_runtime": {"rank": rank, "factor_dtype": fdt},
              "svd_runtime_int4": {"rank": rank, "group_size": group}}[codec]
    data = wire.encode(build(codec, params), [layer])
    assert wire.inspect(data)["ratio"] == layer.raw_bytes / len(data)
    _, (out,) = wire.decode(data)
    assert out.k.shape == layer.k.shape and out.k.dtype == dtype and torch.isfinite(out.k).all()
    for a, b in ((layer.k, out.k), (layer.v, out.v)):
        if codec == "cachegen":
            assert torch.all((a.float() - b.float()).abs() <= cachegen_bound(a, dtype, bits, chunk))
        else:
            svd_check(a, b, rank, fdt if codec == "svd_runtime" else None)
