"""Measured links: timed TCP transfers on loopback and over a tc-shaped veth pair (root only)."""

import subprocess

import numpy as np
import pytest

from kvwire import netlab

SHAPE = netlab.can_shape()


def test_sizes_span_the_range_and_the_fit_recovers_a_known_link():
    sizes = netlab.sizes_log(1 << 10, 1 << 30, 3)
    assert sizes[0] == 1 << 10 and sizes[-1] == 1 << 30 and sizes == sorted(set(sizes)) and len(sizes) == 19
    rows = [{"bytes": n, "seconds": 2e-4 + 8 * n / 5e9 * (1 + 0.01 * (r - 1))} for n in sizes for r in range(3)]
    fit = netlab.fit_link(rows)
    assert fit.rate_gbps == pytest.approx(5.0, rel=1e-6) and fit.latency_s == pytest.approx(2e-4, rel=1e-3)
    err = netlab.model_error(rows, fit.latency_s, fit.rate_gbps)
    assert max(e["rel_error"] for e in err) < 1e-6
    with pytest.raises(netlab.NetlabError, match="at least two sizes"):
        netlab.fit_link([{"bytes": 10, "seconds": 1.0}])
    with pytest.raises(netlab.NetlabError, match="positive"):
        netlab.measure(netlab.Link("127.0.0.1", (), (), None, "loopback"), [0])


def test_loopback_transfers_are_timed_per_size():
    with netlab.loopback() as link:
        rows = netlab.measure(link, [1 << 10, 1 << 20, 4 << 20], repeats=2, timeout=30)
    assert len(rows) == 6 and all(r["seconds"] > 0 and r["link"] == "loopback" for r in rows)
    small = np.median([r["seconds"] for r in rows if r["bytes"] == 1 << 10])
    large = np.median([r["seconds"] for r in rows if r["bytes"] == 4 << 20])
    assert large > small  # 4 MB takes longer than 1 KB, on any machine


@pytest.mark.skipif(SHAPE is not None, reason=f"shaped links: {SHAPE}")
def test_a_shaped_veth_link_runs_at_its_rate_and_leaves_nothing_behind():
    with netlab.veth_link(1.0, prefix="kvwt") as link:
        assert link.kind == "veth" and link.rate_gbps == 1.0
        rows = netlab.measure(link, [1 << 20, 2 << 20, 4 << 20, 8 << 20], repeats=2, timeout=30)
    fit = netlab.fit_link(rows)
    # the shaper caps the rate (unshaped, this machine's veth runs at 10-40 Gbps) and traffic flows;
    # how close to 1 Gbps it gets is a measurement (results/tables/link_model.csv), not a test: a
    # loaded 2-core machine measured 0.84-0.95
    assert 0.4 < fit.rate_gbps < 1.05
    big = [e for e in netlab.model_error(rows, fit.latency_s, fit.rate_gbps) if e["bytes"] >= 2 << 20]
    assert max(e["rel_error"] for e in big) < 0.5
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "kvwta" not in left and "kvwtb" not in left


def test_link_validation_stage_writes_transfers_model_and_bands(tmp_path):
    import pandas as pd

    from kvwire.stages.link import link_summary, validate_link

    model = validate_link("loopback", None, [1 << 10, 1 << 20, 2 << 20, 4 << 20], 2, tmp_path / "t.csv",
                          tmp_path / "m.csv", log=lambda *_: None)
    assert len(pd.read_csv(tmp_path / "t.csv")) == 8
    assert list(model["bytes"]) == [1 << 10, 1 << 20, 2 << 20, 4 << 20]
    assert (model.fitted_rate_gbps > 0).all() and (model.rel_error_fitted >= 0).all()
    bands = link_summary([tmp_path / "m.csv"], tmp_path / "s.csv").set_index("band")
    assert set(bands.index) == {"< 1 MB", "1-100 MB"}


def test_fit_is_relative_and_never_returns_a_negative_latency():
    sizes = [1 << 20, 1 << 24, 1 << 28]
    # a link that slows down at large sizes (caches, as loopback does) pulls a line below zero at n = 0
    rows = [{"bytes": n, "seconds": 8 * n / (8e9 if n < 1 << 28 else 5e9)} for n in sizes]
    fit = netlab.fit_link(rows)
    assert fit.latency_s == 0.0
    # through the origin with relative residuals: the rate lies between the two measured rates
    assert 5.0 < fit.rate_gbps < 8.0

    def sq(rate):
        return sum(e["rel_error"] ** 2 for e in netlab.model_error(rows, 0.0, rate))

    assert sq(fit.rate_gbps) < min(sq(fit.rate_gbps * 0.97), sq(fit.rate_gbps * 1.03), sq(5.0), sq(8.0))


def test_heldout_error_scores_only_sizes_the_fit_did_not_see():
    from kvwire.stages.link import heldout_errors

    sizes = [1 << 10, 1 << 20, 1 << 22, 1 << 24, 1 << 26, 1 << 28]
    # a straight link except the two sizes the held-out fit does not see (4 MB, 64 MB), 20 % slower:
    # the fit on 1, 16 and 256 MB is exact, so the held-out error is exactly those 20 %
    slow = {1 << 22, 1 << 26}
    rows = [{"bytes": n, "seconds": 1e-4 + 8 * n / 10e9 * (1.2 if n in slow else 1.0)} for n in sizes]
    err = heldout_errors(rows)
    assert np.isnan(err[1]) and np.isnan(err[3]) and np.isnan(err[5])  # fitted on: not scored
    t = 8 * (1 << 22) / 10e9  # 4 MB's link time; measured 1e-4 + 1.2 t, modelled 1e-4 + t
    assert err[2] == pytest.approx(0.2 * t / (1e-4 + 1.2 * t), rel=1e-6)
    assert err[4] > 0.15 and err[0] >= 0  # below 1 MB: scored too (held out by size)
    # the fit over every size hides most of that error: it was fitted on the slow sizes too
    fit = netlab.fit_link(rows)
    fitted = {e["bytes"]: e["rel_error"] for e in netlab.model_error(rows, fit.latency_s, fit.rate_gbps)}
    assert fitted[1 << 26] < err[4]
    assert all(np.isnan(e) for e in heldout_errors(rows[:4]))  # three sizes >= 1 MB: too few to split
