"""Hybrid codecs: ``prune_quant`` (a token-selection policy, then a quantizer on the kept tokens) and ``k8v4``
(keys int8, values int4).

Error bound used for k8v4 (the int8/int4 bound of ``tests/test_uniform_codecs.py``, restated): per quantization
group with M = max|x|, r = max - min, step = M / 127 (keys, symmetric) or r / 15 (values, min-max), scale and zero
point rounded to the scale dtype (relative eps_sd / 2, absolute floor sub_sd) before codes are computed:

    |x - x_hat| <= step / 2 + eps_sd * (M + [values] r) + (qmax + 3) * sub_sd + eps_out * (|x| + step) + sub_out

plus 1e-6 * (M + r) of float32 arithmetic. prune_quant has no bound of its own: its kept tokens must decode to
exactly what the quantizer alone yields for them (tested bit for bit), so the quantizer's bound carries over.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import random_layers
from kvwire import wire
from kvwire.codecs import LayerContext, LayerKV, build
from kvwire.codecs.base import pack_sections, unpack_sections
from kvwire.codecs.bitpack import packed_size
from kvwire.codecs.registry import TENSOR_CODECS
from kvwire.errors import CodecError, KVError, WireError

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
SDT = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
POLICIES = ["streaming_llm", "h2o", "snapkv", "pyramidkv", "keynorm"]
QUANTS = ["int8", "int4", "kivi2", "kivi4", "fp8_e4m3", "fp8_e5m2", "k8v4"]
PQ_SPECS = [
    {},
    {"policy": "h2o", "budget": 0.25, "quant": "int8"},
    {"policy": "snapkv", "policy_params": {"obs_window": 8, "kernel_size": 3}, "quant": "int4",
     "quant_params": {"granularity": "channel"}},
    {"policy": "pyramidkv", "budget": 0.4, "policy_params": {"obs_window": 4}, "quant": "k8v4"},
    {"policy": "keynorm", "keep": 9, "quant": "fp8_e4m3"},
    {"policy": "streaming_llm", "policy_params": {"sinks": 2}, "quant": "kivi2",
     "quant_params": {"group_size": 4, "residual": 3}},
    {"policy": "h2o", "policy_params": {"recent_ratio": 0.25}, "quant": "fp8_e5m2",
     "quant_params": {"scaling": "head"}},
]
K8V4_SPECS = [
    {},
    {"key_granularity": "channel"},
    {"key_granularity": "group", "key_group_size": 8, "value_granularity": "group", "value_group_size": 8},
    {"value_granularity": "channel", "scale_dtype": "bfloat16"},
    {"key_granularity": "channel", "value_granularity": "group", "value_group_size": 16, "scale_dtype": "float32"},
]


def synthetic_stats(layers, obs=32, seed=0):
    """Positive attention statistics of the shapes extraction stores (for h2o / snapkv / pyramidkv)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for layer in layers:
        h, s, _ = layer.k.shape
        out.append({"attn_sum": torch.rand(h, s, generator=g) * s,
                    "obs_attn": torch.softmax(torch.randn(h, min(obs, s), s, generator=g), dim=-1)})
    return out


def full(name, params):
    """``params`` with every default filled in."""
    return {**{k: spec.default for k, spec in TENSOR_CODECS[name].PARAMS.items()}, **params}


def policy_of(params):
    p = full("prune_quant", params)
    return p["policy"], {**p["policy_params"], "budget": p["budget"], "keep": p["keep"]}


def quant_of(params):
    p = full("prune_quant", params)
    return p["quant"], p["quant_params"]


def round_trip(name, params, layers, stats=None):
    data = wire.encode(build(name, params), layers, stats=stats)
    header, out = wire.decode(data)
    return data, header, out


def ratio(name, params, layers, stats):
    data = wire.encode(build(name, params), layers, stats=stats)
    raw = sum(layer.raw_bytes for layer in layers)
    assert wire.inspect(data)["ratio"] == raw / len(data)
    return raw / len(data)


def _sub(dtype):
    return float(torch.finfo(dtype).smallest_normal) * float(torch.finfo(dtype).eps)


def half_bound(x, bits, sym, gran, g, sdt, out_dtype):
    """The per-element int bound of one half (module docstring)."""
    qmax = 2 ** (bits - 1) - 1 if sym else 2**bits - 1
    xf = x.float()
    h, s, d = xf.shape
    view, dim = (xf.reshape(h, s, d // g, g), -1) if gran == "group" else (xf, -1 if gran == "token" else 1)
    hi, lo = view.amax(dim, keepdim=True), view.amin(dim, keepdim=True)
    m, r = torch.maximum(hi, -lo), hi - lo
    step = (m if sym else r) / qmax
    eps_sd, eps_out = torch.finfo(sdt).eps, torch.finfo(out_dtype).eps
    b = (step / 2 + eps_sd * (m + (0 if sym else r)) + (qmax + 3) * _sub(sdt) + 1e-6 * (m + r)
         + eps_out * (view.abs() + step) + _sub(out_dtype))
    return b.reshape(h, s, d)


def assert_k8v4_within_bound(layers, out, params):
    p = full("k8v4", params)
    sdt = SDT[p["scale_dtype"]]
    for a, b in zip(layers, out, strict=True):
        assert b.positions is None and b.k.shape == a.k.shape and b.k.dtype == a.k.dtype
        for x, y, bits, sym, half in ((a.k, b.k, 8, True, "key"), (a.v, b.v, 4, False, "value")):
            bnd = half_bound(x, bits, sym, p[f"{half}_granularity"], p[f"{half}_group_size"], sdt, x.dtype)
            err = (x.float() - y.float()).abs()
            assert torch.isfinite(y.float()).all()
            assert torch.all(err <= bnd), f"k8v4 {params} {half}s: max excess {float((err - bnd).max())}"


# ---- registry and params ---------------------------------------------------------------------------

def test_registered_with_defaults_that_need_no_statistics():
    pq = build("prune_quant")
    assert pq.params == {"policy": "streaming_llm", "budget": 0.5, "keep": 0, "policy_params": {},
                         "quant": "int4", "quant_params": {}}
    assert build("k8v4").params == {"key_granularity": "token", "key_group_size": 64, "value_granularity": "token",
                                    "value_group_size": 32, "scale_dtype": "float16"}
    layers = random_layers(n_layers=2, seq=20)
    _, _, out = round_trip("prune_quant", {}, layers)  # no stats: streaming_llm is content-free
    assert [layer.positions.tolist() for layer in out] == [[0, 1, 2, 3, 14, 15, 16, 17, 18, 19]] * 2


def test_nested_params_are_canonical_and_survive_the_header():
    params = {"policy": "h2o", "policy_params": {"recent_ratio": 1}, "quant": "int8",
              "quant_params": {"granularity": "channel"}}
    c = build("prune_quant", params)
    assert c.params["policy_params"] == {"recent_ratio": 1.0} and isinstance(c.params["policy_params"]["recent_ratio"],
                                                                             float)
    c.params["policy_params"]["recent_ratio"] = 0.0  # a copy: the codec is not changed through it
    assert c.params["policy_params"] == {"recent_ratio": 1.0}
    layers = random_layers(n_layers=1, seq=12)
    header, _ = wire.decode(wire.encode(c, layers, stats=synthetic_stats(layers)))
    assert header.params == c.params and build(header.codec, header.params).params == c.params


@pytest.mark.parametrize("name,params,match", [
    ("prune_quant", {"policy": "lru"}, "'policy' must be one of"),
    ("prune_quant", {"quant": "int3"}, "'quant' must be one of"),
    ("prune_quant", {"quant": "zstd"}, "'quant' must be one of"),
    ("prune_quant", {"policy_params": {"sinkz": 4}}, r"policy_params for 'streaming_llm'.*unknown.*sinkz"),
    ("prune_quant", {"policy": "snapkv", "policy_params": {"pooling": "median"}}, r"policy_params.*'pooling'"),
    ("prune_quant", {"policy_params": {"budget": 0.2}}, r"\['budget'\].*own parameter"),
    ("prune_quant", {"policy_params": {"sinks": "4"}}, r"'sinks' must be int"),
    ("prune_quant", {"policy_params": {4: 4}}, "policy_params keys must be parameter names"),
    ("prune_quant", {"policy_params": [("sinks", 4)]}, "'policy_params' must be dict"),
    ("prune_quant", {"quant_params": {"bits": 3}}, r"quant_params for 'int4'.*unknown.*bits"),
    ("prune_quant", {"quant": "k8v4", "quant_params": {"granularity": "token"}}, r"quant_params for 'k8v4'"),
    ("prune_quant", {"budget": 1.5}, "<= 1.0"),
    ("prune_quant", {"sinks": 4}, "unknown parameter"),
    ("k8v4", {"key_granularity": "tensor"}, "'key_granularity' must be one of"),
    ("k8v4", {"value_group_size": 0}, ">= 1"),
    ("k8v4", {"scale_dtype": "float8"}, "'scale_dtype' must be one of"),
    ("k8v4", {"granularity": "token"}, "unknown parameter"),
])
def test_bad_params_name_the_problem(name, params, match):
    with pytest.raises(CodecError, match=match):
        build(name, params)


def test_group_size_must_divide_head_dim():
    layer = LayerKV(torch.randn(2, 5, 8), torch.randn(2, 5, 8))
    for params, match in (({"key_granularity": "group"}, "key_group_size 64"),
                          ({"value_granularity": "group"}, "value_group_size 32")):
        with pytest.raises(CodecError, match=f"head_dim 8 is not a multiple of {match}"):
            wire.encode(build("k8v4", params), [layer])
    with pytest.raises(CodecError, match="value_group_size"):
        wire.encode(build("prune_quant", {"quant": "k8v4", "quant_params": {"value_granularity": "group"}}), [layer])


# ---- round trip, positions, ratio ------------------------------------------------------------------

@pytest.mark.parametrize("params", PQ_SPECS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_prune_quant_round_trip_positions_and_ratio(params, dtype):
    layers = random_layers(n_layers=3, heads=2, seq=40, dim=16, dtype=dtype, outlier=True)
    stats = synthetic_stats(layers)
    data, header, out = round_trip("prune_quant", params, layers, stats)
    raw = sum(layer.raw_bytes for layer in layers)
    assert header.raw_bytes == raw and wire.inspect(data)["ratio"] == raw / len(data)
    policy, pparams = policy_of(params)
    _, _, alone = round_trip(policy, pparams, layers, stats)  # what the policy alone keeps
    for a, b, sel in zip(layers, out, alone, strict=True):
        assert b.k.dtype == dtype and b.v.dtype == dtype and b.positions.dtype == torch.int64
        assert torch.equal(b.positions, sel.positions) and torch.all(b.positions[1:] > b.positions[:-1])
        assert b.k.shape == b.v.shape == (a.k.shape[0], b.positions.numel(), a.k.shape[2])
        assert torch.isfinite(b.k).all() and torch.isfinite(b.v).all()


@pytest.mark.parametrize("params", K8V4_SPECS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_k8v4_round_trip_and_ratio(params, dtype):
    layers = random_layers(n_layers=3, heads=2, seq=33, dim=16, dtype=dtype)
    data, header, out = round_trip("k8v4", params, layers)
    raw = sum(layer.raw_bytes for layer in layers)
    assert header.raw_bytes == raw and wire.inspect(data)["ratio"] == raw / len(data)
    assert build(header.codec, header.params).params == build("k8v4", params).params
    for a, b in zip(layers, out, strict=True):
        assert b.k.shape == a.k.shape and b.v.shape == a.v.shape and b.k.dtype == dtype and b.v.dtype == dtype
        assert b.positions is None


@pytest.mark.parametrize("params", PQ_SPECS)
def test_prune_quant_kept_tokens_decode_exactly_as_the_quantizer_alone(params):
    """The cascade's error on kept tokens IS the quantizer's: same bytes in, same values out."""
    layers = random_layers(n_layers=3, heads=2, seq=40, dim=16, dtype=torch.bfloat16, outlier=True)
    stats = synthetic_stats(layers)
    _, _, out = round_trip("prune_quant", params, layers, stats)
    kept = [LayerKV(a.k.index_select(1, b.positions), a.v.index_select(1, b.positions)) for a, b in zip(layers, out)]
    quant, qparams = quant_of(params)
    _, _, ref = round_trip(quant, qparams, kept)
    for b, r in zip(out, ref, strict=True):
        assert torch.equal(b.k, r.k) and torch.equal(b.v, r.v)
    # and the payload carries the quantizer's bytes verbatim after the keep mask
    c, q = build("prune_quant", params), build(quant, qparams)
    header, kheader = wire.make_header(c, layers), wire.make_header(q, kept)
    for i, layer in enumerate(layers):
        mask, inner = unpack_sections(c.encode_layer(layer, header.context(i, stats[i])), 2, "prune_quant")
        assert len(mask) == packed_size(40, 1) == 5
        assert bytes(inner) == q.encode_layer(kept[i], kheader.context(i))


@pytest.mark.parametrize("params", PQ_SPECS)
def test_prune_quant_ratio_beats_the_policy_alone_and_the_quantizer_alone(params):
    layers = random_layers(n_layers=3, heads=2, seq=64, dim=64, dtype=torch.float16)
    stats = synthetic_stats(layers)
    both = ratio("prune_quant", params, layers, stats)
    assert both > ratio(*policy_of(params), layers, stats)
    assert both > ratio(*quant_of(params), layers, stats)


def test_prune_quant_ratio_is_about_the_product():
    layers = random_layers(n_layers=2, heads=3, seq=256, dim=64, dtype=torch.bfloat16)
    r = ratio("prune_quant", {"budget": 0.25, "quant": "int8"}, layers, None)
    assert 0.95 * 4 * ratio("int8", {}, layers, None) < r < 4 * ratio("int8", {}, layers, None)


# ---- k8v4: bounds and bytes ------------------------------------------------------------------------

@pytest.mark.parametrize("outlier", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("params", K8V4_SPECS)
def test_k8v4_error_within_analytical_bound(params, dtype, outlier):
    layers = random_layers(n_layers=2, seq=33, outlier=outlier, dtype=dtype)
    _, _, out = round_trip("k8v4", params, layers)
    assert_k8v4_within_bound(layers, out, params)


def test_k8v4_bound_is_tight_and_keys_are_finer_than_values():
    layers = random_layers(n_layers=1, seq=64, dim=64, dtype=torch.float32)
    params = {"scale_dtype": "float32"}
    _, _, (out,) = round_trip("k8v4", params, layers)
    a = layers[0]
    k_err, v_err = (a.k - out.k).abs(), (a.v - out.v).abs()
    assert float((k_err / half_bound(a.k, 8, True, "token", 64, torch.float32, torch.float32)).max()) > 0.8
    assert float((v_err / half_bound(a.v, 4, False, "token", 32, torch.float32, torch.float32)).max()) > 0.8
    assert float(k_err.mean()) * 5 < float(v_err.mean())


@pytest.mark.parametrize("params,int8_params,int4_params", [
    ({}, {}, {}),
    ({"key_granularity": "channel", "value_granularity": "group", "value_group_size": 16},
     {"granularity": "channel"}, {"granularity": "group", "group_size": 16}),
    ({"key_granularity": "group", "key_group_size": 32, "scale_dtype": "bfloat16"},
     {"granularity": "group", "group_size": 32, "scale_dtype": "bfloat16"}, {"scale_dtype": "bfloat16"}),
])
def test_k8v4_is_int8_keys_plus_int4_values_byte_for_byte(params, int8_params, int4_params):
    h, s, d = 3, 50, 64
    layer = random_layers(n_layers=1, heads=h, seq=s, dim=d, outlier=True)[0]

    def sections(name, p, count):
        c = build(name, p)
        return [bytes(x) for x in unpack_sections(c.encode_layer(layer, wire.make_header(c, [layer]).context(0)),
                                                  count, name)]

    k8v4 = sections("k8v4", params, 5)
    assert k8v4[:2] == sections("int8", int8_params, 4)[:2]  # key codes, key scales
    assert k8v4[2:] == sections("int4", int4_params, 6)[3:]  # value codes, value scales, value zeros
    numel = h * s * d
    p = full("k8v4", params)
    n_scales = {"token": h * s, "channel": h * d}
    ks = n_scales.get(p["key_granularity"], h * s * d // p["key_group_size"])
    vs = n_scales.get(p["value_granularity"], h * s * d // p["value_group_size"])
    scale_b = SDT[p["scale_dtype"]].itemsize
    c = build("k8v4", params)
    payload = c.encode_layer(layer, wire.make_header(c, [layer]).context(0))
    assert len(payload) == (numel + ks * scale_b) + (packed_size(numel, 4) + 2 * vs * scale_b) + 4 + 5 * 8
    _, _, (out,) = round_trip("k8v4", params, [layer])
    _, _, (k_ref,) = round_trip("int8", int8_params, [layer])
    _, _, (v_ref,) = round_trip("int4", int4_params, [layer])
    assert torch.equal(out.k, k_ref.k) and torch.equal(out.v, v_ref.v)


# ---- edge cases --------------------------------------------------------------------------------------

EDGE_LAYERS = {
    "seq=1": LayerKV(torch.randn(1, 1, 8).half(), torch.randn(1, 1, 8).half()),
    "seq=37": LayerKV(torch.randn(2, 37, 16), torch.randn(2, 37, 16)),  # no multiple of any group
    "zeros": LayerKV(torch.zeros(2, 5, 8), torch.zeros(2, 5, 8)),
    "constants": LayerKV(torch.full((2, 5, 8), 3.5).bfloat16(), torch.full((2, 5, 8), -2.0).bfloat16()),
    "fp16 extremes": LayerKV(torch.tensor([[[65504.0, -65504.0, 6e-5, 0.0] * 2] * 3]).half(),
                             torch.tensor([[[6e-5, -6e-5, 1.0, -65504.0] * 2] * 3]).half()),
    "fp16 max rows": LayerKV(torch.tensor([[[65504.0] * 8, [-65504.0] * 8]]).half(),
                             torch.full((1, 2, 8), 65504.0).half()),
}


@pytest.mark.parametrize("case", sorted(EDGE_LAYERS))
@pytest.mark.parametrize("params", [{}, {"key_granularity": "channel", "value_granularity": "group",
                                         "value_group_size": 8}])
def test_k8v4_edge_cases(case, params):
    layer = EDGE_LAYERS[case]
    _, _, out = round_trip("k8v4", params, [layer])
    assert_k8v4_within_bound([layer], out, params)
    if case == "zeros":
        assert torch.count_nonzero(out[0].k) == 0 and torch.count_nonzero(out[0].v) == 0
    if case == "constants":
        assert torch.equal(out[0].v, layer.v)  # min-max values: a constant group decodes exactly


@pytest.mark.parametrize("case", sorted(EDGE_LAYERS))
@pytest.mark.parametrize("params", PQ_SPECS)
def test_prune_quant_edge_cases(case, params):
    layer = EDGE_LAYERS[case]
    stats = synthetic_stats([layer])
    _, _, (out,) = round_trip("prune_quant", params, [layer], stats)
    _, _, (sel,) = round_trip(*policy_of(params), [layer], stats)
    assert torch.equal(out.positions, sel.positions)
    assert torch.isfinite(out.k).all() and torch.isfinite(out.v).all() and out.k.dtype == layer.k.dtype
    if case == "zeros":
        assert torch.count_nonzero(out.k) == 0 and torch.count_nonzero(out.v) == 0
    if case == "seq=1":
        assert out.positions.tolist() == [0]


@pytest.mark.parametrize("name,params", [("k8v4", {}), ("prune_quant", {}),
                                         ("prune_quant", {"policy": "h2o", "quant": "fp8_e4m3"})])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["keys", "values"])
def test_nan_inf_is_refused(name, params, bad, where):
    layer = random_layers(n_layers=1, seq=20, dim=16)[0]
    k, v = layer.k.clone(), layer.v.clone()
    (k if where == "keys" else v)[1, 8, 2] = bad  # token 8: one prune_quant drops (keeps 0-3 and 14-19)
    with pytest.raises(KVError, match=f"NaN/Inf.*layer 0 {where}"):
        wire.encode(build(name, params), [LayerKV(k, v)], stats=synthetic_stats([layer]))


@pytest.mark.parametrize("where", ["keys", "values"])
def test_k8v4_scale_overflow_is_a_clear_error(where):
    big, one = torch.full((1, 2, 8), 1e38), torch.ones(1, 2, 8)
    layer = LayerKV(big, one) if where == "keys" else LayerKV(one, -big)  # its scale / zero overflows fp16
    with pytest.raises(CodecError, match="k8v4.*scale_dtype=float32"):
        wire.encode(build("k8v4"), [layer])
    _, _, (out,) = round_trip("k8v4", {"scale_dtype": "float32"}, [layer])
    assert_k8v4_within_bound([layer], [out], {"scale_dtype": "float32"})


def test_prune_quant_refuses_a_token_subset():
    layer = random_layers(n_layers=1, seq=10)[0]
    subset = LayerKV(layer.k, layer.v, torch.arange(10, dtype=torch.int64) * 2)
    ctx = LayerContext(0, 1, layer.k.dtype, tuple(layer.k.shape))
    with pytest.raises(CodecError, match="already holds a token subset"):
        build("prune_quant").encode_layer(subset, ctx)


# ---- damaged payloads -------------------------------------------------------------------------------

def _encoded(name, params, seq=21):
    layer = random_layers(n_layers=1, seq=seq, dim=16)[0]
    c = build(name, params)
    stats = synthetic_stats([layer])[0]
    header = wire.make_header(c, [layer])
    return c, header.context(0), c.encode_layer(layer, header.context(0, stats))


@pytest.mark.parametrize("name,params", [("k8v4", {}), ("k8v4", {"key_granularity": "channel"})]
                         + [("prune_quant", p) for p in PQ_SPECS])
def test_truncated_or_garbage_payload_raises_wire_error(name, params):
    c, ctx, payload = _encoded(name, params)
    assert c.decode_layer(payload, ctx).k.shape[0] == 2
    for bad in (payload[:-3], payload[:-1], payload[: len(payload) // 2], b"\x01", b"", b"\x00" * 7,
                payload + b"\x00"):
        with pytest.raises(WireError):
            c.decode_layer(bad, ctx)


def test_prune_quant_garbled_sections_raise_wire_error():
    c, ctx, payload = _encoded("prune_quant", {}, seq=21)  # keeps 10 of 21: tokens 0-3 and 15-20
    mask, inner = (bytes(p) for p in unpack_sections(payload, 2, "prune_quant"))
    assert c.decode_layer(pack_sections([mask, inner]), ctx).positions.tolist() == [0, 1, 2, 3] + list(range(15, 21))
    for bad_mask in (mask[:-1], mask + b"\x00", mask[:2] + bytes([mask[2] | 0x80]),  # padding bit past token 21
                     b"\x00\x00\x00",  # keeps nothing
                     bytes([mask[0] ^ 0x10]) + mask[1:]):  # one token more: inner sizes no longer match
        with pytest.raises(WireError):
            c.decode_layer(pack_sections([bad_mask, inner]), ctx)
    with pytest.raises(WireError):
        c.decode_layer(pack_sections([mask]), ctx)
    with pytest.raises(WireError):
        c.decode_layer(pack_sections([mask, inner, b""]), ctx)
    with pytest.raises(WireError):
        c.decode_layer(pack_sections([mask, inner[:-1]]), ctx)
    data = bytearray(wire.encode(c, random_layers(n_layers=1, seq=21, dim=16)))
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(WireError):
        wire.decode(bytes(data))


def test_k8v4_garbled_sections_raise_wire_error():
    c, ctx, payload = _encoded("k8v4", {})
    parts = [bytes(p) for p in unpack_sections(payload, 5, "k8v4")]
    with pytest.raises(WireError):  # a section missing
        c.decode_layer(pack_sections(parts[:-1]), ctx)
    for i in range(5):  # any one section a byte short
        with pytest.raises(WireError):
            c.decode_layer(pack_sections(parts[:i] + [parts[i][:-1]] + parts[i + 1:]), ctx)
    with pytest.raises(WireError, match="key code"):  # -128 is never emitted
        c.decode_layer(pack_sections([b"\x80" + parts[0][1:]] + parts[1:]), ctx)
    for i, what in ((1, "scale"), (3, "scale"), (4, "zero point")):
        for fill in (float("nan"), float("inf")):
            bad = torch.full((len(parts[i]) // 2,), fill, dtype=torch.float16).view(torch.uint8).numpy().tobytes()
            with pytest.raises(WireError, match=f"non-finite {what}"):
                c.decode_layer(pack_sections(parts[:i] + [bad] + parts[i + 1:]), ctx)
    with pytest.raises(WireError, match="key_group_size"):  # a header whose head_dim the groups do not divide
        build("k8v4", {"key_granularity": "group", "key_group_size": 32}).decode_layer(payload, ctx)


# ---- properties ---------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(heads=st.integers(1, 3), seq=st.integers(1, 70), dim=st.sampled_from([8, 16, 64]),
       dtype=st.sampled_from(DTYPES), key_gran=st.sampled_from(["token", "channel", "group"]),
       value_gran=st.sampled_from(["token", "channel", "group"]), sdt=st.sampled_from(sorted(SDT)),
       outlier=st.booleans(), seed=st.integers(0, 2**16))
def test_property_k8v4(heads, seq, dim, dtype, key_gran, value_gran, sdt, outlier, seed):
    params = {"key_granularity": key_gran, "key_group_size": 8, "value_granularity": value_gran,
              "value_group_size": 8, "scale_dtype": sdt}
    layers = random_layers(n_layers=2, heads=heads, seq=seq, dim=dim, dtype=dtype, seed=seed, outlier=outlier)
    data, _, out = round_trip("k8v4", params, layers)
    assert wire.inspect(data)["ratio"] == sum(x.raw_bytes for x in layers) / len(data)
    assert_k8v4_within_bound(layers, out, params)


@settings(max_examples=25, deadline=None)
@given(heads=st.integers(1, 3), seq=st.integers(1, 70), dim=st.sampled_from([8, 16, 64]),
       dtype=st.sampled_from(DTYPES), policy=st.sampled_from(POLICIES), quant=st.sampled_from(QUANTS),
       budget=st.floats(0.0, 1.0), keep=st.sampled_from([0, 0, 1, 7, 100]), seed=st.integers(0, 2**16))
def test_property_prune_quant(heads, seq, dim, dtype, policy, quant, budget, keep, seed):
    params = {"policy": policy, "budget": budget, "keep": keep, "quant": quant}
    if quant.startswith("kivi"):
        params["quant_params"] = {"group_size": 4, "residual": 2}
    if policy in ("snapkv", "pyramidkv"):
        params["policy_params"] = {"obs_window": 4}
    layers = random_layers(n_layers=3, heads=heads, seq=seq, dim=dim, dtype=dtype, seed=seed)
    stats = synthetic_stats(layers, seed=seed)
    data, _, out = round_trip("prune_quant", params, layers, stats)
    assert wire.inspect(data)["ratio"] == sum(x.raw_bytes for x in layers) / len(data)
    _, _, alone = round_trip(*policy_of(params), layers, stats)
    kept = [LayerKV(a.k.index_select(1, b.positions), a.v.index_select(1, b.positions)) for a, b in zip(layers, out)]
    _, _, ref = round_trip(*quant_of(params), kept)
    for b, sel, r in zip(out, alone, ref, strict=True):
        assert torch.equal(b.positions, sel.positions) and b.k.dtype == dtype
        assert torch.equal(b.k, r.k) and torch.equal(b.v, r.v)
