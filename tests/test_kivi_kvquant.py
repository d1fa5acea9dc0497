"""KIVI (kivi2/kivi4) and KVQuant-style (kvquant2/3/4) codecs: round trip, ratio from bytes,
analytical error bounds, residual/outlier exactness, edge cases, errors, property test."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import random_layers
from kvwire import wire
from kvwire.codecs import LayerKV, build, known_names
from kvwire.codecs.bitpack import packed_size
from kvwire.codecs.kivi import split_points, value_group
from kvwire.codecs.kvquant import kmeans_1d, n_outliers, nf_codes, nf_levels, select_outliers
from kvwire.errors import CodecError, KVError, WireError

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
U = 2.0**-10  # twice float16's unit roundoff: covers rounding a stored scale / zero / offset / range
TINY = 1e-6  # float16 subnormal spacing (6e-8) times the largest code, and fp32 arithmetic

KIVI_SMALL = {"group_size": 8, "residual": 8}  # small enough that seq=70 quantizes most tokens
SPECS = [
    ("kivi2", KIVI_SMALL), ("kivi4", KIVI_SMALL), ("kivi2", {}), ("kivi4", {**KIVI_SMALL, "value_group_size": 4}),
    ("kvquant2", {}), ("kvquant3", {}), ("kvquant4", {}),
    ("kvquant2", {"levels": "kmeans"}), ("kvquant3", {"levels": "kmeans"}), ("kvquant4", {"levels": "kmeans"}),
    ("kvquant3", {"outlier_fraction": 0.0}),
]


def bits_of(name):
    return int(name[-1])


def roundtrip(name, params, layers):
    data = wire.encode(build(name, params), layers)
    return data, wire.decode(data)[1]


def out_eps(dtype):
    return torch.finfo(dtype).eps  # rounding the decoded value to the output dtype: |y| * eps / 2


# ---- analytical bounds -------------------------------------------------------------------------

def kivi_bound(k, v, name, params):
    """Per-element bound for KIVI on x [H, S, D] (float32 input values).

    Quantized elements: with range r and minimum m of the element's group and q = 2**bits - 1, the
    step is s = r / q and |x - x_hat| <= s/2 (rounding) + q * U/2 * s (the stored scale rounds down
    by at most U/2 relative, clipping the top code) + U/2 * |m| (the stored zero point rounds), plus
    the output dtype's rounding; full-precision residual elements are exact (bound 0)."""
    h, s, d = k.shape
    bits, q = bits_of(name), 2 ** bits_of(name) - 1
    g = params.get("group_size", 32)
    n_k, n_v = split_points(s, g, params.get("residual", 128))
    vg = value_group(d, params.get("value_group_size", 32))
    bounds = []
    for t, n_q, shape, dim in ((k, n_k, (h, n_k // g, g, d), 2), (v, n_v, (h, n_v, d // vg, vg), 3)):
        tf = t.float()
        head = tf[:, :n_q].reshape(shape)
        lo, hi = head.amin(dim, keepdim=True), head.amax(dim, keepdim=True)
        step = (hi - lo) / q
        b = (step * (0.5 + q * U) + U * lo.abs() + TINY).expand(shape).reshape(h, n_q, d)
        b = b + (head.abs().reshape(h, n_q, d) + step.expand(shape).reshape(h, n_q, d)) * out_eps(t.dtype)
        bounds.append(torch.cat([b, torch.zeros(h, s - n_q, d)], dim=1))
    return bounds


def kvquant_bound(t, name, params, per_channel):
    """Per-element bound for KVQuant nf on t [H, S, D]: with the vector's FULL min/max (the inlier
    range is inside it), half-range R, offset O and the largest gap between adjacent NF levels,
    |x - x_hat| <= R * gap / 2 + U * (|O| + R) (rounding of the stored offset/range, any clip at +-1)
    + output rounding. Outliers are exact, so the bound holds for every element. k-means codebooks
    lie inside [-1, 1], so for levels='kmeans' only |x - x_hat| <= 2R (+ rounding) is analytic."""
    tf = t.float()
    dim = 1 if per_channel else 2
    lo, hi = tf.amin(dim, keepdim=True), tf.amax(dim, keepdim=True)
    half, off = (hi - lo) / 2, (hi + lo) / 2
    if params.get("levels", "nf") == "nf":
        lv = nf_levels(bits_of(name))
        factor = float((lv[1:] - lv[:-1]).max()) / 2
    else:
        factor = 2.0
    return half * factor + U * (off.abs() + half) + TINY + (tf.abs() + half * factor) * out_eps(t.dtype)


def assert_within_bound(name, params, a, b):
    if name.startswith("kivi"):
        bk, bv = kivi_bound(a.k, a.v, name, params)
    else:
        bk = kvquant_bound(a.k, name, params, per_channel=True)
        bv = kvquant_bound(a.v, name, params, per_channel=False)
    for x, y, bound in ((a.k, b.k, bk), (a.v, b.v, bv)):
        err = (x.float() - y.float()).abs()
        assert torch.isfinite(y).all()
        assert torch.all(err <= bound), f"max excess {float((err - bound).max())}"


# ---- common rules ------------------------------------------------------------------------------

def test_registered():
    assert {"kivi2", "kivi4", "kvquant2", "kvquant3", "kvquant4"} <= set(known_names())


@pytest.mark.parametrize("name,params", SPECS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_shape_dtype_ratio_and_bound(name, params, dtype):
    layers = random_layers(n_layers=2, heads=2, seq=70, dim=16, dtype=dtype)
    data, out = roundtrip(name, params, layers)
    raw = sum(layer.raw_bytes for layer in layers)
    assert wire.inspect(data)["ratio"] == raw / len(data)
    for a, b in zip(layers, out):
        assert b.k.shape == a.k.shape and b.v.shape == a.v.shape
        assert b.k.dtype == dtype and b.v.dtype == dtype and b.positions is None
        assert_within_bound(name, params, a, b)


@pytest.mark.parametrize("name,params", SPECS)
def test_bound_on_outlier_heavy_input(name, params):
    layers = random_layers(n_layers=1, heads=2, seq=64, dim=16, outlier=True)
    spiky = spike_layer(seed=3)
    for a, b in zip(layers + [spiky], roundtrip(name, params, layers + [spiky])[1]):
        assert_within_bound(name, params, a, b)


def spike_layer(heads=2, seq=64, dim=16, seed=0, frac=0.005, dtype=torch.bfloat16):
    """Gaussian KV with a few isolated huge entries (frac of them, x50): what dense-and-sparse targets."""
    g = torch.Generator().manual_seed(seed)
    k, v = torch.randn(heads, seq, dim, generator=g), torch.randn(heads, seq, dim, generator=g)
    n = int(frac * k.numel())
    for t in (k, v):
        idx = torch.randperm(t.numel(), generator=g)[:n]
        t.view(-1)[idx] *= 50.0
    return LayerKV(k.to(dtype), v.to(dtype))


EDGE = [
    LayerKV(torch.randn(1, 1, 8).half(), torch.randn(1, 1, 8).half()),  # seq = 1
    LayerKV(torch.zeros(2, 5, 8), torch.zeros(2, 5, 8)),  # all zeros
    LayerKV(torch.full((2, 5, 8), 3.5).bfloat16(), torch.full((2, 5, 8), -2.0).bfloat16()),  # constants
    LayerKV(torch.tensor([[[65504.0, -65504.0, 1e-7, 0.0]]]).half(),
            torch.tensor([[[6e-5, -6e-5, 1.0, -1.0]]]).half()),  # fp16 extremes, seq = 1
    LayerKV(torch.tensor([[[65504.0, 6e-5], [-65504.0, -6e-5], [65504.0, 0.0]]]).half(),
            torch.tensor([[[65504.0, -65504.0], [6e-5, -6e-5], [1.0, 65504.0]]]).half()),  # extremes in one group
    LayerKV(torch.randn(2, 37, 8), torch.randn(2, 37, 8)),  # seq a multiple of no group size
]
EDGE_SPECS = [("kivi2", {"group_size": 1, "residual": 0}), ("kivi4", {"group_size": 3, "residual": 1}),
              ("kivi2", {}), ("kvquant2", {}), ("kvquant3", {"levels": "kmeans"}),
              ("kvquant4", {"outlier_fraction": 0.2})]


@pytest.mark.parametrize("name,params", EDGE_SPECS)
def test_edge_cases(name, params):
    for layer in EDGE:
        _, (out,) = roundtrip(name, params, [layer])
        assert out.k.shape == layer.k.shape and out.k.dtype == layer.k.dtype
        assert torch.isfinite(out.k).all() and torch.isfinite(out.v).all()
        assert_within_bound(name, params, layer, out)
    for layer in EDGE[1:3]:  # zeros and constants decode exactly (zero range -> the offset / zero point)
        _, (out,) = roundtrip(name, params, [layer])
        assert torch.equal(out.k, layer.k) and torch.equal(out.v, layer.v)


@pytest.mark.parametrize("name", ["kivi2", "kvquant3"])
def test_scale_overflow_is_a_clear_error(name):
    params = {"residual": 0, "group_size": 2} if name == "kivi2" else {}
    big = torch.tensor([1e38, -1e38, 5.0, 1.0]).repeat(1, 2, 1)
    layer = LayerKV(big.clone(), big.clone())
    with pytest.raises(CodecError, match="scale_dtype=float32"):
        wire.encode(build(name, params), [layer])
    _, (out,) = roundtrip(name, {**params, "scale_dtype": "float32"}, [layer])
    assert torch.isfinite(out.k).all()


@pytest.mark.parametrize("head_dim,asked,group", [
    (64, 32, 32), (128, 32, 32), (256, 32, 32), (96, 32, 32),  # KIVI's 32 divides every head_dim we run
    (8, 32, 8), (16, 32, 16),  # head_dim below the group size: one group, the whole vector (stories260K)
    (80, 32, 20), (16, 5, 4), (64, 24, 16), (7, 3, 1),  # no divisor: the largest divisor below it
    (64, 0, 64), (64, 64, 64), (64, 1, 1),  # 0: the previous default, one scale per token
])
def test_value_group_is_the_largest_divisor_not_above_the_asked_size(head_dim, asked, group):
    assert value_group(head_dim, asked) == group


def test_value_group_fallback_gives_the_divisors_bytes():
    """value_group_size=5 on head_dim 16 quantizes in groups of 4: the same frames as asking for 4."""
    layers = random_layers(n_layers=2, seq=70, dim=16)
    five = wire.decode(wire.encode(build("kivi2", {**KIVI_SMALL, "value_group_size": 5}), layers))
    four = wire.decode(wire.encode(build("kivi2", {**KIVI_SMALL, "value_group_size": 4}), layers))
    for a, b in zip(five[1], four[1]):
        assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v)
    c5, c4 = build("kivi2", {**KIVI_SMALL, "value_group_size": 5}), build("kivi2", {**KIVI_SMALL, "value_group_size": 4})
    ctx = wire.make_header(c5, layers).context(0)
    assert c5.encode_layer(layers[0], ctx) == c4.encode_layer(layers[0], ctx)


@pytest.mark.parametrize("name", ["kivi2", "kivi4", "kvquant2", "kvquant3", "kvquant4"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_inf_refused(name, bad):
    layer = random_layers(n_layers=1)[0]
    v = layer.v.clone()
    v[1, 4, 3] = bad
    with pytest.raises(KVError, match="NaN/Inf.*layer 0 values"):
        wire.encode(build(name), [LayerKV(layer.k, v)])


@pytest.mark.parametrize("name,params", [("kivi2", KIVI_SMALL), ("kvquant3", {}), ("kvquant2", {"levels": "kmeans"})])
def test_truncated_or_garbled_payload_raises_wire_error(name, params):
    c = build(name, params)
    layer = random_layers(n_layers=1, seq=70)[0]
    header = wire.make_header(c, [layer])
    ctx = header.context(0)
    payload = c.encode_layer(layer, ctx)
    for bad in (payload[:-3], payload[:50], b"\x01", b"", payload + b"\x00"):
        with pytest.raises(WireError):
            c.decode_layer(bad, ctx)
    garbled = bytearray(payload)
    garbled[0] ^= 0x01  # section count
    with pytest.raises(WireError):
        c.decode_layer(bytes(garbled), ctx)
    garbled = bytearray(payload)
    garbled[4 + 8 * 0] ^= 0x04  # first section length
    with pytest.raises(WireError):
        c.decode_layer(bytes(garbled), ctx)
    if name.startswith("kvquant"):  # outlier indices (the payload's tail) out of range / unsorted
        for fill in (b"\xff", b"\x00"):
            garbled = bytearray(payload)
            garbled[-16:] = fill * 16
            with pytest.raises(WireError, match="outlier indices"):
                c.decode_layer(bytes(garbled), ctx)


@settings(max_examples=30, deadline=None)
@given(
    heads=st.integers(1, 4), seq=st.integers(1, 70), dim=st.sampled_from([8, 16, 64, 96, 128, 256]),
    dtype=st.sampled_from(DTYPES), scale=st.floats(1e-3, 1e3), data=st.data(),
)
def test_property_round_trip(heads, seq, dim, dtype, scale, data):
    name = data.draw(st.sampled_from(["kivi2", "kivi4", "kvquant2", "kvquant3", "kvquant4"]))
    if name.startswith("kivi"):
        params = {"group_size": data.draw(st.integers(1, 32)), "residual": data.draw(st.integers(0, 80)),
                  "value_group_size": data.draw(st.sampled_from([0, 4, 8, 32, 5]))}
    else:
        params = {"levels": data.draw(st.sampled_from(["nf", "kmeans"])),
                  "outlier_fraction": data.draw(st.sampled_from([0.0, 0.01, 0.1])),
                  "kmeans_iters": data.draw(st.integers(0, 4))}
    g = torch.Generator().manual_seed(seq * 1000 + dim)
    layer = LayerKV((torch.randn(heads, seq, dim, generator=g) * scale).to(dtype),
                    (torch.randn(heads, seq, dim, generator=g) * scale).to(dtype))
    header, (out,) = wire.decode(wire.encode(build(name, params), [layer]))
    assert header.params == build(name, params).params
    assert out.k.shape == layer.k.shape and out.k.dtype == dtype and out.v.dtype == dtype
    assert_within_bound(name, params, layer, out)


# ---- KIVI specifics ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["kivi2", "kivi4"])
def test_kivi_residual_tokens_are_bit_exact(name):
    layer = random_layers(n_layers=1, heads=3, seq=300, dim=16)[0]
    _, (out,) = roundtrip(name, {}, [layer])
    n_k, n_v = split_points(300, 32, 128)
    assert (n_k, n_v) == (160, 172)  # 172 = 5 full groups of 32 + 12 tokens of an incomplete group
    assert torch.equal(out.k[:, n_k:].view(torch.int16), layer.k[:, n_k:].view(torch.int16))
    assert torch.equal(out.v[:, n_v:].view(torch.int16), layer.v[:, n_v:].view(torch.int16))
    assert not torch.equal(out.k[:, :n_k], layer.k[:, :n_k])  # the rest really is quantized
    short = random_layers(n_layers=1, seq=128)[0]  # seq <= residual: nothing quantized
    _, (out,) = roundtrip(name, {}, [short])
    assert torch.equal(out.k, short.k) and torch.equal(out.v, short.v)


@pytest.mark.parametrize("name,bits", [("kivi2", 2), ("kivi4", 4)])
@pytest.mark.parametrize("params,groups", [({}, 2), ({"value_group_size": 0}, 1)])  # KIVI's 32 channels; tokenwise
def test_kivi_ratio_matches_analytical_size(name, bits, params, groups):
    h, s, d = 3, 1024, 64
    layers = random_layers(n_layers=2, heads=h, seq=s, dim=d, dtype=torch.bfloat16)
    data = wire.encode(build(name, params), layers)
    g, r = 32, 128
    n_k = (s - r) // g * g  # 896: 28 whole groups
    n_v = s - r
    expected = (
        n_k * h * d * bits // 8 + 2 * (h * (n_k // g) * d) * 2 + h * (s - n_k) * d * 2  # key codes, scale+zero, residual
        + n_v * h * d * bits // 8 + 2 * (h * n_v * groups) * 2 + h * (s - n_v) * d * 2  # value codes, scale+zero, residual
    )
    section_table = 4 + 8 * 8
    info = wire.inspect(data)
    assert [f["bytes"] for f in info["frames"]] == [expected + section_table] * 2
    raw = 2 * 2 * h * s * d * 2
    assert info["ratio"] == raw / len(data)
    assert info["overhead_bytes"] < 600  # container header + frame heads + trailer
    assert abs(info["ratio"] - raw / (2 * expected)) / info["ratio"] < 0.005


def test_kivi_value_scales_are_per_token_per_32_channels_known_answer():
    """Hand-made values: channels 0-31 of every token span [0, 15], channels 32-63 span [-1.5, 0]. With
    KIVI's 32-channel groups each half gets its own scale and zero point (1 and 0; 0.1 and -1.5 at
    4 bits), read back from the payload's value sections; the old tokenwise setting spans [-1.5, 15]."""
    h, s, d, r = 1, 4, 64, 0
    ramp = torch.arange(32, dtype=torch.float32) % 16  # 0..15 twice: the min and max of the group
    low = -(torch.arange(32, dtype=torch.float32) % 16) / 10.0  # 0 .. -1.5, every multiple of -0.1
    v = torch.cat([ramp, low]).repeat(h, s, 1)
    layer = LayerKV(torch.zeros(h, s, d), v)
    codec = build("kivi4", {"residual": r})
    ctx = wire.make_header(codec, [layer]).context(0)
    from kvwire.codecs.base import tensor_from, unpack_sections
    sections = unpack_sections(codec.encode_layer(layer, ctx), 8, "kivi4")
    scales = tensor_from(sections[5], torch.float16, (h, s, 2, 1)).float().flatten()
    zeros = tensor_from(sections[6], torch.float16, (h, s, 2, 1)).float().flatten()
    assert torch.equal(scales, torch.tensor([1.0, 0.1], dtype=torch.float16).float().repeat(s))
    assert torch.equal(zeros, torch.tensor([0.0, -1.5]).repeat(s))
    _, (out,) = roundtrip("kivi4", {"residual": r}, [layer])
    assert torch.equal(out.v[..., :32], v[..., :32])  # integers 0..15 on a step of 1: exact
    assert (out.v[..., 32:] - v[..., 32:]).abs().max() < 1e-3  # a step of 0.1 (fp16 scale)
    _, (tokenwise,) = roundtrip("kivi4", {"residual": r, "value_group_size": 0}, [layer])
    step = 16.5 / 15  # one range [-1.5, 15] over the whole token
    assert (tokenwise.v[..., 32:] - v[..., 32:]).abs().max() > 0.3 * step  # the small half loses its precision


def test_kivi_keys_per_channel_beat_per_token_on_outlier_channel():
    """Per-channel key scales isolate the 100x channel: the small channels keep their precision."""
    plain = random_layers(n_layers=1, seq=96, outlier=False)
    spiky = random_layers(n_layers=1, seq=96, outlier=True)
    p = {"group_size": 32, "residual": 0}
    err = [float((a[0].k[..., 0].float() - roundtrip("kivi4", p, a)[1][0].k[..., 0].float()).abs().mean())
           for a in (plain, spiky)]
    assert err[1] <= err[0] * 1.01


# ---- KVQuant specifics -------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [2, 3, 4])
def test_nf_levels_symmetric_sorted(bits):
    lv = nf_levels(bits)
    assert lv.numel() == 2**bits
    assert torch.all(lv[1:] > lv[:-1])
    assert torch.equal(lv, -lv.flip(0))
    assert lv[0] == -1.0 and lv[-1] == 1.0


@pytest.mark.parametrize("name", ["kvquant2", "kvquant3", "kvquant4"])
@pytest.mark.parametrize("levels", ["nf", "kmeans"])
def test_kvquant_outliers_come_back_exact(name, levels):
    layer = spike_layer(seq=128, seed=1)
    _, (out,) = roundtrip(name, {"levels": levels}, [layer])
    for x, y, dim in ((layer.k, out.k, 1), (layer.v, out.v, 2)):
        top = select_outliers(x.float(), dim, n_outliers(x.numel(), 0.01))
        assert top.numel() == math.floor(0.01 * x.numel())
        assert torch.equal(y.reshape(-1)[top].view(torch.int16), x.reshape(-1)[top].view(torch.int16))
        spikes = x.float().abs() > 10  # the planted x50 entries (0.5% < 1%) are all among them
        assert spikes.sum() > 0 and torch.equal(y[spikes], x[spikes])


@pytest.mark.parametrize("name", ["kvquant2", "kvquant3", "kvquant4"])
@pytest.mark.parametrize("levels", ["nf", "kmeans"])
def test_kvquant_outliers_lower_the_error(name, levels):
    for layers in (random_layers(n_layers=1, seq=128, outlier=True), [spike_layer(seq=128, seed=2)]):
        def mse(frac):
            _, (out,) = roundtrip(name, {"levels": levels, "outlier_fraction": frac}, layers)
            a = layers[0]
            return float(((out.k.float() - a.k.float()) ** 2).mean() + ((out.v.float() - a.v.float()) ** 2).mean())
        assert mse(0.01) < mse(0.0)


@pytest.mark.parametrize("name", ["kvquant2", "kvquant3", "kvquant4"])
def test_kmeans_beats_nf_on_skewed_input(name):
    g = torch.Generator().manual_seed(5)
    skewed = LayerKV(torch.randn(2, 256, 16, generator=g).exp().bfloat16(),  # log-normal: long right tail
                     (-torch.randn(2, 256, 16, generator=g).exp()).bfloat16())

    def mse(levels):
        _, (out,) = roundtrip(name, {"levels": levels}, [skewed])
        return float(((out.k.float() - skewed.k.float()) ** 2).mean() + ((out.v.float() - skewed.v.float()) ** 2).mean())

    assert mse("kmeans") <= mse("nf")


def test_kmeans_1d_lloyd_never_increases_error():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(12, 200, generator=g).exp() - 1.5
    weight = torch.ones_like(data)

    def sse(cent):
        return float((data.unsqueeze(-1) - cent.unsqueeze(1)).abs().amin(-1).square().sum())

    prev = None
    for iters in (0, 1, 2, 4, 8):
        cent = kmeans_1d(data, weight, 8, iters)
        assert torch.all(cent[:, 1:] >= cent[:, :-1])
        assert torch.all(cent >= data.amin(1, keepdim=True)) and torch.all(cent <= data.amax(1, keepdim=True))
        if prev is not None:
            assert sse(cent) <= prev * (1 + 1e-6)
        prev = sse(cent)
    spiked, masked = data.clone(), weight.clone()
    spiked[:, 0], masked[:, 0] = 1000.0, 0.0  # a weight-0 entry (an outlier) never pulls a centroid
    assert torch.all(kmeans_1d(spiked, masked, 8, 4) < 100)


def test_kvquant3_codes_pack_eight_per_three_bytes():
    layer = random_layers(n_layers=1, heads=2, seq=40, dim=16)[0]
    c = build("kvquant3")
    payload = c.encode_layer(layer, wire.make_header(c, [layer]).context(0))
    from kvwire.codecs.base import unpack_sections
    sections = unpack_sections(payload, 12, "kvquant3")
    n = layer.k.numel()
    assert len(sections[0]) == len(sections[6]) == packed_size(n, 3) == n * 3 // 8
    assert len(sections[3]) == 0  # nf levels are not stored
    assert len(sections[4]) == n_outliers(n, 0.01) * 2 and len(sections[5]) == n_outliers(n, 0.01) * 4


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_nf_lookup_is_exact_nearest_level(bits):
    """The grid lookup in nf_codes equals a plain binary search over the decision boundaries,
    on random values, on the boundaries and levels themselves and one ulp either side of them."""
    lv = nf_levels(bits)
    bounds = (lv[1:] + lv[:-1]) / 2
    x = torch.cat([torch.rand(20000, generator=torch.Generator().manual_seed(bits)) * 2 - 1, bounds, lv,
                   torch.linspace(-1, 1, 257)])
    x = torch.cat([x, torch.nextafter(x, torch.tensor(2.0)), torch.nextafter(x, torch.tensor(-2.0))]).clamp(-1, 1)
    assert torch.equal(nf_codes(x, bits), torch.bucketize(x, bounds))


def test_fast_top_indices_match_full_topk():
    from kvwire.codecs.kvquant import _top_indices
    g = torch.Generator().manual_seed(1)
    for n, count in ((196608, 1966), (50000, 500), (3000, 30), (100000, 0), (80000, 8000)):
        score = torch.randn(n, generator=g).square()
        score[: n // 10] *= 0.01  # structure: a block with no candidates
        got = _top_indices(score, count).sort().values
        assert torch.equal(got, torch.topk(score, count).indices.sort().values)
    flat = torch.rand(100000, generator=g)
    flat[: 33 * 31 : 31] = 5.0  # the strided sample's top ranks are all there is above 1: fallback path
    assert torch.equal(_top_indices(flat, 500).sort().values, torch.topk(flat, 500).indices.sort().values)


@pytest.mark.parametrize("n", [3000, 196608])  # the full top-k path and the strided-candidates path
def test_ties_at_the_kth_score_go_to_the_lowest_indices(n):
    # a real bf16 cache has many equal z-scores: the GPU's radix select keeps the lowest indices among
    # those tied at the k-th score, and the CPU codec must pick the same ones (torch.topk leaves it open)
    from kvwire.codecs.kvquant import _top_indices
    g = torch.Generator().manual_seed(5)
    score = torch.rand(n, generator=g)
    top = torch.randperm(n, generator=g)[:40]
    score[top] = 3.0  # 40 sure outliers
    tied = torch.randperm(n, generator=g)[:200]
    tied = tied[~torch.isin(tied, top)]
    score[tied] = 2.0  # the k-th score: ties, of which only some fit
    count = 40 + 25
    want = torch.cat([top, tied.sort().values[:25]]).sort().values
    assert torch.equal(_top_indices(score, count).sort().values, want)
    assert _top_indices(score, 0).numel() == 0


def _fill_section(payload, i, byte):
    """The payload with section i's bytes all set to ``byte`` (the section table is left as is)."""
    import struct
    count = struct.unpack_from("<I", payload, 0)[0]
    lengths = [struct.unpack_from("<Q", payload, 4 + 8 * j)[0] for j in range(count)]
    start = 4 + 8 * count + sum(lengths[:i])
    return payload[:start] + bytes([byte]) * lengths[i] + payload[start + lengths[i]:]


@pytest.mark.parametrize("name,params,section", [("kivi2", KIVI_SMALL, 1), ("kivi4", KIVI_SMALL, 6),
                                                 ("kvquant3", {}, 2), ("kvquant2", {"levels": "kmeans"}, 9)])
def test_non_finite_scales_in_payload_raise_wire_error(name, params, section):
    """Scales, zero points, offsets, ranges or codebooks that decode to NaN (0xFFFF in float16) are refused."""
    c = build(name, params)
    layer = random_layers(n_layers=1, seq=70)[0]
    ctx = wire.make_header(c, [layer]).context(0)
    payload = c.encode_layer(layer, ctx)
    with pytest.raises(WireError, match="non-finite"):
        c.decode_layer(_fill_section(payload, section, 0xFF), ctx)


# ---- KVQuant pre-RoPE keys ------------------------------------------------------------------------

def rope_stats(n_layers, dim, theta=10000.0):
    f = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    return [{"rope_inv_freq": f.clone(), "rope_scaling": torch.ones(1)} for _ in range(n_layers)]


def rope_keyed_layer(heads=2, seq=256, dim=64, seed=0, dtype=torch.float32):
    """Keys made as a model makes them: a pre-RoPE tensor with outlier CHANNELS, then rotated."""
    from kvwire.rope import rotate

    g = torch.Generator().manual_seed(seed)
    pre = torch.randn(heads, seq, dim, generator=g)
    pre[..., 5] += 30.0  # a loud channel, constant across tokens: per-channel quantization's best case
    pre[..., dim - 3] *= 12.0
    k = rotate(pre, torch.arange(seq), rope_stats(1, dim)[0]["rope_inv_freq"]).to(dtype)
    return pre, LayerKV(k, torch.randn(heads, seq, dim, generator=g).to(dtype))


@pytest.mark.parametrize("name", ["kvquant2", "kvquant4"])
def test_pre_rope_keys_quantize_better_and_within_bound(name):
    from kvwire.rope import rotate

    pre, layer = rope_keyed_layer()
    stats = rope_stats(1, 64)
    errs = {}
    for flag in (False, True):
        codec = build(name, {"pre_rope": flag})
        data = wire.encode(codec, [layer], stats=stats)
        out = wire.decode(data)[1][0]
        assert out.k.dtype == layer.k.dtype and out.k.shape == layer.k.shape
        assert torch.equal(out.v, wire.decode(wire.encode(build(name), [layer]))[1][0].v)  # values untouched
        errs[flag] = float((out.k.float() - layer.k.float()).pow(2).sum() / layer.k.float().pow(2).sum())
        if flag:  # the bound holds in the pre-RoPE domain, where the codec quantized
            back = rotate(out.k, torch.arange(layer.k.shape[1]), stats[0]["rope_inv_freq"], inverse=True)
            bound = kvquant_bound(pre, name, {}, per_channel=True)
            assert torch.all((back - pre).abs() <= bound + 1e-4 * (1 + pre.abs()))
    assert errs[True] < 0.5 * errs[False], errs  # the reason KVQuant quantizes before RoPE


def test_pre_rope_needs_rope_statistics_and_checks_its_table():
    _, layer = rope_keyed_layer(seq=32, dim=16)
    codec = build("kvquant4", {"pre_rope": True})
    with pytest.raises(CodecError, match="rope_inv_freq"):
        wire.encode(codec, [layer])
    bad = [{"rope_inv_freq": torch.ones(9), "rope_scaling": torch.ones(1)}]
    with pytest.raises(KVError, match="RoPE statistics"):
        wire.encode(codec, [layer], stats=bad)
    stats = rope_stats(1, 16)
    header = wire.make_header(codec, [layer])
    payload = codec.encode_layer(layer, header.context(0, stats[0]))
    from kvwire.codecs.base import pack_sections, unpack_sections

    parts = [bytes(p) for p in unpack_sections(payload, 13, "kvquant4")]
    for table in (parts[12][:-3], torch.tensor([1.0, float("nan"), 1.0, 0.1, 1.0]).numpy().tobytes(),
                  torch.tensor([1.0, 0.1, 0.01, 0.001, -1.0]).numpy().tobytes()):
        with pytest.raises(WireError, match="RoPE table"):
            codec.decode_layer(pack_sections(parts[:12] + [table]), header.context(0))
    with pytest.raises(WireError):
        codec.decode_layer(payload[:-3], header.context(0))
