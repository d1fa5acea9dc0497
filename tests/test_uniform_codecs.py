"""Uniform integer quantization (int8, int4), real FP8 (fp8_e4m3, fp8_e5m2) and the lz4 byte stage.

Error bounds used below (derived in the codec docstrings, restated here):

* int (b bits, qmax = 127 / 255 for int8, 7 / 15 for int4, sym / asym), per quantization group with
  M = max|x|, r = max - min, step = M / qmax (sym) or r / qmax (asym); scale and zero point are
  rounded to the scale dtype (relative rounding <= eps_sd / 2, absolute floor sub_sd = its smallest
  subnormal) before codes are computed, so for every element

      |x - x_hat| <= step / 2 + eps_sd * (M + [asym] r) + (qmax + 3) * sub_sd
                     + eps_out * (|x| + step) + sub_out

  (half a step from round-to-nearest; a zero point rounded above the minimum, or a scale rounded
  below the range, costs at most qmax * |scale rounding| + |zero rounding|; then the output dtype's
  rounding of x_hat, relative eps_out / 2 or absolute sub_out / 2 among its subnormals), plus
  1e-6 * (M + r) of float32 arithmetic.
* fp8 (m mantissa bits, smallest subnormal sub, max fp8_max), with the stored scale
  s <= amax / fp8_max * (1 + eps_sd) + sub_sd (rounded up from amax / fp8_max):

      |x - x_hat| <= 2^-(m+1) * |x| + s * sub / 2 + eps_out * (1.07 * |x| + s * sub) + sub_out

  (round-to-nearest-even is within half a ULP: relative 2^-(m+1) in the normal range, sub / 2 in the
  subnormal range; x / s never exceeds fp8_max because s was rounded up; then the output dtype's
  rounding as above), plus 2^-22 * |x| for the float32 division.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import random_layers
from kvwire import wire
from kvwire.codecs import LayerKV, build, known_names
from kvwire.codecs.base import pack_sections, unpack_sections
from kvwire.codecs.bitpack import packed_size
from kvwire.codecs.int8 import quantize_per_token
from kvwire.codecs.registry import TENSOR_CODECS
from kvwire.errors import CodecError, KVError, WireError

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
SDT = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
INT_SPECS = [
    ("int8", {}),
    ("int8", {"granularity": "channel"}),
    ("int8", {"granularity": "group", "group_size": 8, "symmetric": False}),
    ("int8", {"scale_dtype": "bfloat16", "symmetric": False}),
    ("int4", {}),
    ("int4", {"granularity": "channel", "symmetric": True}),
    ("int4", {"granularity": "group", "group_size": 8}),
    ("int4", {"granularity": "group", "group_size": 16, "symmetric": True, "scale_dtype": "float32"}),
]
FP8_SPECS = [
    ("fp8_e4m3", {}),
    ("fp8_e4m3", {"scaling": "tensor"}),
    ("fp8_e5m2", {"scaling": "head"}),
    ("fp8_e5m2", {"scale_dtype": "bfloat16"}),
]
LOSSY = INT_SPECS + FP8_SPECS + [("int4+lz4", {"lz4": {"level": 9}}), ("fp8_e4m3+lz4", {})]
ALL = LOSSY + [("lz4", {}), ("lz4", {"level": 3})]
FP8 = {"fp8_e4m3": (3, 2.0**-9, 448.0, torch.float8_e4m3fn), "fp8_e5m2": (2, 2.0**-16, 57344.0, torch.float8_e5m2)}


def _sub(dtype):
    return float(torch.finfo(dtype).smallest_normal) * float(torch.finfo(dtype).eps)  # smallest subnormal


def _tensor_params(name, params):
    """The tensor codec's name and its full params (defaults filled in) of a (possibly composite) spec."""
    base = name.split("+")[0]
    given = params.get(base, {}) if "+" in name else params
    return base, {**{k: spec.default for k, spec in TENSOR_CODECS[base].PARAMS.items()}, **given}


def int_bound(x, name, params, out_dtype):
    """The analytical per-element bound for int8/int4 (see the module docstring)."""
    name, p = _tensor_params(name, params)
    bits = 8 if name == "int8" else 4
    sym, gran, g, sdt = p["symmetric"], p["granularity"], p["group_size"], SDT[p["scale_dtype"]]
    qmax = 2 ** (bits - 1) - 1 if sym else 2**bits - 1
    xf = x.float()
    h, s, d = xf.shape
    if gran == "group":
        view, dim = xf.reshape(h, s, d // g, g), -1
    else:
        view, dim = xf, (-1 if gran == "token" else 1)
    hi, lo = view.amax(dim, keepdim=True), view.amin(dim, keepdim=True)
    m = torch.maximum(hi, -lo)
    r = hi - lo
    step = (m if sym else r) / qmax
    eps_sd, eps_out = torch.finfo(sdt).eps, torch.finfo(out_dtype).eps
    b = (step / 2 + eps_sd * (m + (0 if sym else r)) + (qmax + 3) * _sub(sdt) + 1e-6 * (m + r)
         + eps_out * (view.abs() + step) + _sub(out_dtype))
    return b.reshape(h, s, d)


def fp8_bound(x, name, params, out_dtype):
    name, p = _tensor_params(name, params)
    m_bits, sub, fmax, _ = FP8[name]
    sdt = SDT[p["scale_dtype"]] if p["scaling"] == "token" else torch.float32
    xf = x.float()
    a = xf.abs()
    amax = {"token": lambda: a.amax(-1, keepdim=True), "head": lambda: a.amax((1, 2), keepdim=True),
            "tensor": lambda: a.amax().reshape(1, 1, 1)}[p["scaling"]]()
    s = torch.where(amax > 0, amax / fmax * (1 + torch.finfo(sdt).eps) + _sub(sdt), torch.ones_like(amax))
    eps_out = torch.finfo(out_dtype).eps
    return (2.0 ** -(m_bits + 1) * a + s * sub / 2 + eps_out * (1.07 * a + s * sub) + _sub(out_dtype)
            + 2.0**-22 * a)


def bound(x, name, params, out_dtype):
    return (fp8_bound if name.startswith("fp8") else int_bound)(x, name, params, out_dtype)


def with_float32_scales(name, params):
    """The same spec with float32 scales for its tensor codec (for inputs beyond fp16's range)."""
    base = name.split("+")[0]
    if base not in TENSOR_CODECS:
        return params
    if "+" in name:
        return {**params, base: {**params.get(base, {}), "scale_dtype": "float32"}}
    return {**params, "scale_dtype": "float32"}


def assert_within_bound(layers, out, name, params):
    for a, b in zip(layers, out):
        for x, y in ((a.k, b.k), (a.v, b.v)):
            err = (x.float() - y.float()).abs()
            bnd = bound(x, name, params, x.dtype)
            assert torch.isfinite(y.float()).all()
            assert torch.all(err <= bnd), f"{name} {params}: max excess {float((err - bnd).max())}"


def round_trip(name, params, layers):
    data = wire.encode(build(name, params), layers)
    header, out = wire.decode(data)
    return data, header, out


# ---- registry, round trip, ratio -----------------------------------------------------------------

def test_registered():
    assert {"int8", "int4", "fp8_e4m3", "fp8_e5m2", "lz4"} <= set(known_names())


@pytest.mark.parametrize("name,params", ALL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_shape_dtype_and_ratio(name, params, dtype):
    layers = random_layers(dtype=dtype)
    data, header, out = round_trip(name, params, layers)
    raw = sum(layer.raw_bytes for layer in layers)
    assert header.raw_bytes == raw
    assert wire.inspect(data)["ratio"] == raw / len(data)
    assert build(header.codec, header.params).params == build(name, params).params
    for a, b in zip(layers, out):
        assert b.k.shape == a.k.shape and b.v.shape == a.v.shape
        assert b.k.dtype == dtype and b.v.dtype == dtype
        assert b.positions is None
        if name == "lz4":
            assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v)


# ---- error bounds ------------------------------------------------------------------------------

@pytest.mark.parametrize("outlier", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,params", LOSSY)
def test_error_within_analytical_bound(name, params, dtype, outlier):
    layers = random_layers(seq=33, outlier=outlier, dtype=dtype)
    _, _, out = round_trip(name, params, layers)
    assert_within_bound(layers, out, name, params)


def test_int_bounds_are_tight_enough_to_mean_something():
    """The bound is no blanket: the observed max error reaches a good fraction of its main term."""
    layers = random_layers(n_layers=1, seq=64, dim=64, dtype=torch.float32)
    for name in ("int8", "int4"):
        _, _, (out,) = round_trip(name, {"scale_dtype": "float32"}, layers)
        err = (layers[0].k - out.k).abs()
        assert float((err / int_bound(layers[0].k, name, {"scale_dtype": "float32"}, torch.float32)).max()) > 0.8


# ---- int specifics -----------------------------------------------------------------------------

def test_int8_defaults_keep_the_legacy_header_and_layout():
    c = build("int8")
    assert c.params == {"scale_dtype": "float16"}  # new params at their defaults stay out of the header
    assert build("int8", {"granularity": "channel"}).params == {"granularity": "channel", "scale_dtype": "float16"}
    layer = random_layers(n_layers=1, seq=9, dim=16)[0]
    header = wire.make_header(c, [layer])
    kc, ks, vc, vs = unpack_sections(c.encode_layer(layer, header.context(0)), 4, "int8")
    codes, scale = quantize_per_token(layer.k, torch.float16)
    assert bytes(kc) == codes.numpy().tobytes() and bytes(ks) == scale.view(torch.int16).numpy().tobytes()
    assert codes.dtype == torch.int8 and int(codes.min()) >= -127


@pytest.mark.parametrize("granularity", ["token", "group", "channel"])
def test_int4_really_packs_two_codes_per_byte(granularity):
    h, s, d = 3, 50, 64
    layer = random_layers(n_layers=1, heads=h, seq=s, dim=d)[0]
    c = build("int4", {"granularity": granularity})
    payload = c.encode_layer(layer, wire.make_header(c, [layer]).context(0))
    numel = h * s * d
    scale_elems = {"token": h * s, "group": h * s * d // 32, "channel": h * d}[granularity]
    # 6 sections (codes, fp16 scales, fp16 zeros for K and V) behind a 4 + 6 * 8 byte table
    expected = 4 + 6 * 8 + 2 * (packed_size(numel, 4) + 2 * 2 * scale_elems)
    assert len(payload) == expected
    assert len(unpack_sections(payload, 6, "int4")[0]) == packed_size(numel, 4) == numel // 2


def _mean_err(name, params, layer):
    _, _, (out,) = round_trip(name, params, [layer])
    return float((layer.k.float() - out.k.float()).abs().mean())


@pytest.mark.parametrize("name", ["int8", "int4"])
def test_per_channel_wins_on_outlier_channel_keys_per_token_on_outlier_tokens(name):
    """KIVI's observation: key outliers sit in channels -> per-channel scales; a hot TOKEN reverses it."""
    chan = random_layers(n_layers=1, seq=64, dim=64, outlier=True, dtype=torch.float32)[0]
    tok_k = torch.randn(2, 64, 64, generator=torch.Generator().manual_seed(1))
    tok_k[:, 5] *= 100.0
    tok = LayerKV(tok_k, tok_k.clone())
    by_token, by_channel = {"granularity": "token"}, {"granularity": "channel"}
    assert _mean_err(name, by_channel, chan) * 3 < _mean_err(name, by_token, chan)
    assert _mean_err(name, by_token, tok) * 3 < _mean_err(name, by_channel, tok)


def test_group_granularity_beats_token_on_wide_heads():
    layer = random_layers(n_layers=1, seq=64, dim=128, dtype=torch.float32)[0]
    assert _mean_err("int4", {"granularity": "group", "group_size": 32}, layer) < _mean_err("int4", {}, layer)


def test_group_size_must_divide_head_dim():
    layer = LayerKV(torch.randn(2, 5, 8), torch.randn(2, 5, 8))  # stories260K's head_dim is 8
    with pytest.raises(CodecError, match="head_dim 8 is not a multiple of group_size 32.*group_size"):
        wire.encode(build("int4", {"granularity": "group"}), [layer])
    _, _, (out,) = round_trip("int4", {"granularity": "group", "group_size": 8}, [layer])
    assert out.k.shape == layer.k.shape


# ---- fp8 specifics -----------------------------------------------------------------------------

@pytest.mark.parametrize("scaling", ["tensor", "head", "token"])
@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fp8_is_bit_exact_on_representable_inputs(fmt, scaling, dtype):
    """x = (fp8 value) * 2^k with each unit's amax = fp8_max * 2^k: the scale is 2^k, decode is exact."""
    _, _, fmax, f8 = FP8[fmt]
    g = torch.Generator().manual_seed(3)
    h, s, d = 2, 9, 16
    q = torch.randint(0, 256, (h, s, d), generator=g, dtype=torch.uint8).view(f8).float()
    q = torch.where(torch.isfinite(q), q, torch.zeros_like(q))
    q[:, :, 0] = fmax  # every token's (hence head's and tensor's) amax is exactly fp8_max
    k = {"token": torch.randint(-4, 1, (h, s, 1), generator=g), "head": torch.randint(-4, 1, (h, 1, 1), generator=g),
         "tensor": torch.tensor(-2).reshape(1, 1, 1)}[scaling]
    x = (q * torch.pow(2.0, k.float())).to(dtype)
    assert torch.equal(x.float(), q * torch.pow(2.0, k.float()))  # representable in the input dtype
    layer = LayerKV(x, -x)
    _, _, (out,) = round_trip(fmt, {"scaling": scaling}, [layer])
    assert torch.equal(out.k, layer.k) and torch.equal(out.v, layer.v)


def test_fp8_wire_bytes_are_real_float8():
    x = torch.tensor([[[448.0, 1.0, -2.0, 0.5]]])
    c = build("fp8_e4m3", {"scaling": "tensor"})
    kc, ks, _, _ = unpack_sections(c.encode_layer(LayerKV(x, x), wire.make_header(c, [LayerKV(x, x)]).context(0)),
                                   4, "fp8_e4m3")
    assert bytes(kc) == x.to(torch.float8_e4m3fn).view(torch.uint8).numpy().tobytes()  # scale is exactly 1
    assert bytes(ks) == torch.tensor([1.0]).numpy().tobytes()  # float32


def test_e5m2_has_more_range_and_e4m3_more_precision():
    g = torch.Generator().manual_seed(5)
    mag = torch.pow(10.0, torch.rand(2, 64, 64, generator=g) * 6 - 3)  # 1e-3 .. 1e3, one shared scale
    x = mag * torch.where(torch.rand(2, 64, 64, generator=g) < 0.5, -1.0, 1.0)
    rel = {}
    for fmt in ("fp8_e4m3", "fp8_e5m2"):
        _, _, (out,) = round_trip(fmt, {"scaling": "tensor"}, [LayerKV(x, x)])
        rel[fmt] = (x - out.k).abs() / x.abs()
    small = mag < 1e-2  # below E4M3's normal range once 1e3 maps to 448 (2^-6 * 1e3 / 448 = 0.035)
    assert float(rel["fp8_e5m2"].max()) <= 2.0**-3 * (1 + 1e-6)  # everything stays normal in E5M2
    assert float(rel["fp8_e4m3"][small].max()) >= 0.5  # E4M3 flushes / coarsens the small end
    assert float(rel["fp8_e5m2"][small].mean()) * 5 < float(rel["fp8_e4m3"][small].mean())
    normal = mag > 0.05
    assert float(rel["fp8_e4m3"][normal].max()) <= 2.0**-4 * (1 + 1e-6)
    assert float(rel["fp8_e4m3"][normal].mean()) < 0.6 * float(rel["fp8_e5m2"][normal].mean())


# ---- edge cases --------------------------------------------------------------------------------

EDGE_LAYERS = [
    LayerKV(torch.randn(1, 1, 8).half(), torch.randn(1, 1, 8).half()),  # seq = 1
    LayerKV(torch.randn(2, 7, 16), torch.randn(2, 7, 16)),  # seq = 7: no multiple of anything
    LayerKV(torch.zeros(2, 5, 8), torch.zeros(2, 5, 8)),  # all zeros
    LayerKV(torch.full((2, 5, 8), 3.5).bfloat16(), torch.full((2, 5, 8), -2.0).bfloat16()),  # constants
    LayerKV(torch.tensor([[[65504.0, -65504.0, 1e-7, 0.0] * 2]]).half(),
            torch.tensor([[[6e-5, -6e-5, 1.0, -1.0] * 2]]).half()),  # fp16 extremes
    LayerKV(torch.tensor([[[65504.0] * 8, [-65504.0] * 8]]).half(), torch.full((1, 2, 8), 6e-5).half()),
    LayerKV(torch.tensor([[[1e-30, -3e-38, 1e-45, 0.0] * 2]]), torch.tensor([[[1e30, -1e30, 1.0, 0.0] * 2]])),
]


@pytest.mark.parametrize("name,params", ALL)
def test_edge_cases(name, params):
    for layer in EDGE_LAYERS:
        big = max(float(layer.k.float().abs().max()), float(layer.v.float().abs().max())) > 65504
        p = with_float32_scales(name, params) if big else params  # else a clear CodecError (tested below)
        base, full = _tensor_params(name, p) if name != "lz4" else (name, {})
        if full.get("granularity") == "group" and layer.k.shape[-1] % full["group_size"]:
            with pytest.raises(CodecError, match="group_size"):
                wire.encode(build(name, p), [layer])
            continue
        _, _, (out,) = round_trip(name, p, [layer])
        assert out.k.shape == layer.k.shape and out.k.dtype == layer.k.dtype
        assert torch.isfinite(out.k).all() and torch.isfinite(out.v).all()
        if name != "lz4":
            assert_within_bound([layer], [out], name, p)
        if layer.k.abs().max() == 0 or name == "lz4":
            assert torch.equal(out.k, layer.k)  # zeros stay exact zeros


@pytest.mark.parametrize("name", ["int8", "int4"])
def test_asymmetric_constant_groups_are_exact(name):
    layer = LayerKV(torch.full((2, 5, 8), 3.5).bfloat16(), torch.full((2, 5, 8), -2.0).bfloat16())
    for gran in ("token", "channel", "group"):
        _, _, (out,) = round_trip(name, {"symmetric": False, "granularity": gran, "group_size": 8}, [layer])
        assert torch.equal(out.k, layer.k) and torch.equal(out.v, layer.v)


@pytest.mark.parametrize("name,params", [("int8", {}), ("int4", {}), ("int4", {"symmetric": True}),
                                         ("fp8_e4m3", {}), ("fp8_e5m2", {})])
def test_scale_overflow_is_a_clear_error(name, params):
    layer = LayerKV(torch.full((1, 2, 8), 1e38), torch.ones(1, 2, 8))  # its scale overflows fp16
    with pytest.raises(CodecError, match="scale_dtype=float32"):
        wire.encode(build(name, params), [layer])
    _, _, (out,) = round_trip(name, {**params, "scale_dtype": "float32"}, [layer])
    assert torch.allclose(out.k, layer.k, rtol=0.07)


@pytest.mark.parametrize("name,params", LOSSY)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["keys", "values"])
def test_nan_inf_is_refused(name, params, bad, where):
    layer = random_layers(n_layers=1, dim=16)[0]
    k, v = layer.k.clone(), layer.v.clone()
    (k if where == "keys" else v)[1, 3, 2] = bad
    with pytest.raises(KVError, match=f"NaN/Inf.*layer 0 {where}"):
        wire.encode(build(name, params), [LayerKV(k, v)])


def test_lz4_passes_nan_through_bit_exact():
    layer = random_layers(n_layers=1, dtype=torch.float32)[0]
    k = layer.k.clone()
    k[0, 0, 0] = float("nan")
    _, _, (out,) = round_trip("lz4", {}, [LayerKV(k, layer.v)])
    assert torch.isnan(out.k[0, 0, 0]) and torch.equal(out.k[1:], k[1:])


def test_lz4_compresses_and_composes():
    zeros = [LayerKV(torch.zeros(2, 64, 64).half(), torch.zeros(2, 64, 64).half())]
    data, _, _ = round_trip("lz4", {}, zeros)
    assert wire.inspect(data)["ratio"] > 20
    sparse = random_layers(seq=128, dim=64)
    sparse = [LayerKV(x.k * (x.k.abs() > 1.5), x.v * (x.v.abs() > 1.5)) for x in sparse]
    assert len(wire.encode(build("int4+lz4"), sparse)) < len(wire.encode(build("int4"), sparse))
    with pytest.raises(CodecError, match="<= 16"):
        build("lz4", {"level": 17})


# ---- corrupted payloads -------------------------------------------------------------------------

def _encode_one(name, params, layer):
    c = build(name, params)
    ctx = wire.make_header(c, [layer]).context(0)
    return c, ctx, c.encode_layer(layer, ctx)


@pytest.mark.parametrize("name,params", ALL)
def test_truncated_or_garbage_payload_raises_wire_error(name, params):
    layer = random_layers(n_layers=1, dim=16)[0]
    c, ctx, payload = _encode_one(name, params, layer)
    for bad in (payload[:-3], payload[:-1], payload[: len(payload) // 2], b"\x01", b"", payload + b"\x00"):
        with pytest.raises(WireError):
            c.decode_layer(bad, ctx)


@pytest.mark.parametrize("name,params", INT_SPECS + FP8_SPECS)
def test_garbled_sections_raise_wire_error(name, params):
    layer = random_layers(n_layers=1, dim=16)[0]
    c, ctx, payload = _encode_one(name, params, layer)
    parts = [bytes(p) for p in unpack_sections(payload, _count(payload), name)]
    assert len(parts) in (4, 6)
    with pytest.raises(WireError):  # a section missing
        c.decode_layer(pack_sections(parts[:-1]), ctx)
    with pytest.raises(WireError):  # code section one byte short, sections consistent
        c.decode_layer(pack_sections([parts[0][:-1]] + parts[1:]), ctx)
    fills = (float("nan"), float("inf")) + ((-1.0,) if name.startswith("fp8") else ())
    for fill in fills:  # scales no encoder writes
        scale_dtype = _stored_scale_dtype(name, c)
        nbytes = len(parts[1]) // torch.empty((), dtype=scale_dtype).element_size()
        bad_scale = torch.full((nbytes,), fill, dtype=scale_dtype).view(torch.uint8).numpy().tobytes()
        with pytest.raises(WireError):
            c.decode_layer(pack_sections([parts[0], bad_scale] + parts[2:]), ctx)
    bad_code = _invalid_code(name, c)
    if bad_code is not None:
        codes = bytearray(parts[0])
        codes[3] = bad_code
        with pytest.raises(WireError):
            c.decode_layer(pack_sections([bytes(codes)] + parts[1:]), ctx)


def _count(payload):
    return int.from_bytes(payload[:4], "little")


def _stored_scale_dtype(name, c):
    p = c.tensor.params
    if name.startswith("fp8") and p["scaling"] != "token":
        return torch.float32
    return SDT[p.get("scale_dtype", "float16")]


def _invalid_code(name, c):
    p = c.tensor.params
    if name == "fp8_e4m3":
        return 0x7F  # NaN
    if name == "fp8_e5m2":
        return 0x7C  # +inf
    if name == "int8" and p.get("symmetric", True):
        return 0x80  # -128: outside the balanced range
    if name == "int4" and p.get("symmetric", False):
        return 0xFF  # two codes 15 > 14
    return None


@pytest.mark.parametrize("name", ["lz4", "int4+lz4"])
def test_lz4_corrupted_frame_raises_wire_error(name):
    layer = random_layers(n_layers=1, seq=64, dim=64)[0]
    c, ctx, payload = _encode_one(name, {}, layer)
    flipped = bytearray(payload)
    flipped[len(payload) // 2] ^= 0x40
    for bad in (bytes(flipped), payload[:20], b"garbage that is not lz4"):
        with pytest.raises(WireError, match="lz4"):
            c.decode_layer(bad, ctx)


# ---- property test -----------------------------------------------------------------------------

@st.composite
def specs(draw, dim):
    family = draw(st.sampled_from(["int8", "int4", "fp8_e4m3", "fp8_e5m2"]))
    sdt = draw(st.sampled_from(["float16", "bfloat16", "float32"]))
    if family.startswith("int"):
        params = {"scale_dtype": sdt, "symmetric": draw(st.booleans()),
                  "granularity": draw(st.sampled_from(["token", "channel", "group"])),
                  "group_size": draw(st.sampled_from([g for g in (8, 16, 32, 64) if dim % g == 0]))}
    else:
        params = {"scale_dtype": sdt, "scaling": draw(st.sampled_from(["tensor", "head", "token"]))}
    if draw(st.booleans()):
        return family + "+lz4", {family: params, "lz4": {"level": draw(st.sampled_from([0, 3]))}}
    return family, params


@settings(max_examples=30, deadline=None)
@given(heads=st.integers(1, 4), seq=st.integers(1, 70), dim=st.sampled_from([8, 16, 64, 96, 128, 256]),
       dtype=st.sampled_from(DTYPES), scale=st.floats(1e-2, 1e2), outlier=st.booleans(), data=st.data())
def test_property_round_trip_within_bound(heads, seq, dim, dtype, scale, outlier, data):
    name, params = data.draw(specs(dim))
    g = torch.Generator().manual_seed(seq * 1000 + dim)
    k = torch.randn(heads, seq, dim, generator=g) * scale
    if outlier:
        k[..., 1] *= 100.0
    layers = [LayerKV(k.to(dtype), (torch.randn(heads, seq, dim, generator=g) * scale).to(dtype))]
    raw = layers[0].raw_bytes
    data_bytes, header, out = round_trip(name, params, layers)
    assert wire.inspect(data_bytes)["ratio"] == raw / len(data_bytes)
    assert header.raw_bytes == raw
    assert out[0].k.shape == (heads, seq, dim) and out[0].k.dtype == dtype
    assert_within_bound(layers, out, name, params)
    assert math.isfinite(float(out[0].k.float().abs().max()))
