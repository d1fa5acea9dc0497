"""The analytical transfer model and break-even solving."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvwire.transfer import (CodecCost, baseline_time, break_even_gbps, pipelined_time, sequential_time, speedup,
                             sweep)


def cost(layers=4, raw=1e6, ratio=4.0, enc=1e-3, dec=5e-4):
    return CodecCost(raw_bytes=int(raw), wire_bytes=[int(raw / ratio / layers)] * layers,
                     encode_s=[enc / layers] * layers, decode_s=[dec / layers] * layers)


def test_sequential_matches_hand_computation():
    c = cost()
    # 250 kB at 10 Gbps = 2e5 bytes * 8 / 1e10 = 2e-4 s
    assert sequential_time(c, 10.0) == pytest.approx(1e-3 + 5e-4 + 8 * 250000 / 1e10)
    assert baseline_time(1e6, 10.0, latency_s=1e-5) == pytest.approx(1e-5 + 8e6 / 1e10)


def test_pipelined_equal_layers_closed_form():
    c = cost(layers=8)
    e, x, d = 1e-3 / 8, 8 * 1e6 / 4 / 8 / 1e9, 5e-4 / 8  # per-layer stage times at 1 Gbps
    assert pipelined_time(c, 1.0) == pytest.approx(e + x + d + 7 * max(e, x, d))


def test_pipelined_never_slower_than_sequential_and_never_faster_than_bottleneck():
    for gbps in (0.1, 1, 10, 100, 1000):
        c = cost(layers=16)
        p, s = pipelined_time(c, gbps), sequential_time(c, gbps)
        assert p <= s + 1e-15
        assert p >= max(sum(c.encode_s), sum(c.decode_s), 8 * c.total_wire_bytes / (gbps * 1e9)) - 1e-15


def test_sequential_break_even_closed_form():
    c = cost()
    be = break_even_gbps(c, "sequential")
    # at B*: raw/B == enc + dec + wire/B
    assert be == pytest.approx(8 * (1e6 - 250000) / 1.5e-3 / 1e9)
    assert baseline_time(c.raw_bytes, be) == pytest.approx(sequential_time(c, be), rel=1e-9)


def test_pipelined_break_even_is_a_root_and_above_sequential():
    c = cost(layers=32)
    be = break_even_gbps(c, "pipelined")
    assert be > break_even_gbps(c, "sequential")
    assert baseline_time(c.raw_bytes, be) == pytest.approx(pipelined_time(c, be), rel=1e-9)
    assert speedup(c, be * 0.9, "pipelined") > 1 > speedup(c, be * 1.1, "pipelined")


def test_no_gain_and_free_codec():
    assert break_even_gbps(cost(ratio=1.0)) == 0.0
    assert break_even_gbps(cost(ratio=0.9), "pipelined") == 0.0
    assert math.isinf(break_even_gbps(cost(enc=0.0, dec=0.0)))


def test_sweep_rows():
    rows = sweep(cost(), [1, 10, 100])
    assert [r["bandwidth_gbps"] for r in rows] == [1, 10, 100]
    assert rows[0]["speedup_sequential"] > rows[-1]["speedup_sequential"]


def test_bad_costs_rejected():
    with pytest.raises(ValueError):
        CodecCost(1, [1, 2], [0.1], [0.1, 0.2])
    with pytest.raises(ValueError):
        CodecCost(1, [1], [-0.1], [0.1])


@settings(max_examples=100, deadline=None)
@given(layers=st.integers(1, 40), ratio=st.floats(1.05, 20), enc=st.floats(1e-6, 1.0), dec=st.floats(1e-6, 1.0),
       raw=st.floats(1e3, 1e10), skew=st.floats(0.1, 10))
def test_property_break_even_separates_win_and_loss(layers, ratio, enc, dec, raw, skew):
    enc_s = [enc / layers * (skew if i == 0 else 1) for i in range(layers)]
    c = CodecCost(int(raw), [max(1, int(raw / ratio / layers))] * layers, enc_s, [dec / layers] * layers)
    for mode, f in (("sequential", sequential_time), ("pipelined", pipelined_time)):
        be = break_even_gbps(c, mode)
        assert be > 0
        assert baseline_time(c.raw_bytes, be * 0.99) > f(c, be * 0.99)
        assert baseline_time(c.raw_bytes, be * 1.01) < f(c, be * 1.01)
