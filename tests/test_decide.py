"""The one decision rule (``kvwire.decide``) that recommend, the router's labels and the paper's decision
table share."""

import math

import pandas as pd

from kvwire.decide import fastest_meeting_floor
from kvwire.paper.decision import choices


def test_the_fastest_codec_meeting_the_floor_wins_where_it_beats_raw():
    d = fastest_meeting_floor({"a": 2.0, "b": 1.0, "c": 0.5}, {"a": True, "b": True, "c": False}, raw_s=3.0)
    assert (d.choice, d.seconds, d.best, d.best_seconds) == ("b", 1.0, "b", 1.0)  # c is faster but misses the floor


def test_raw_wins_where_no_eligible_codec_beats_it_and_the_best_is_still_named():
    d = fastest_meeting_floor({"a": 2.0, "b": 1.5}, {"a": True, "b": True}, raw_s=1.5)
    assert (d.choice, d.seconds, d.best, d.best_seconds) == ("raw", 1.5, "b", 1.5)  # a tie with raw is not a win
    none = fastest_meeting_floor({"a": 0.1}, {"a": False}, raw_s=1.0)
    assert none.choice == "raw" and none.best is None and math.isnan(none.best_seconds)


def test_ties_go_to_the_first_name_and_nan_times_are_not_candidates():
    assert fastest_meeting_floor({"zeta": 1.0, "alpha": 1.0}, {"zeta": True, "alpha": True}, 2.0).choice == "alpha"
    assert fastest_meeting_floor({"a": float("nan"), "b": 1.0}, {"a": True, "b": True}, 2.0).choice == "b"


def test_the_paper_decision_is_the_same_rule_on_median_speedups():
    quality = pd.DataFrame([{"model": m, "codec": c, "token_agreement": a}
                            for m in ("x", "y") for c, a in (("fast", 0.97), ("safe", 0.99), ("lossy", 0.5))])
    rows = [{"model": m, "bin": 1024, "codec": c, "bandwidth_gbps": bw, "speedup_pipelined": s}
            for m in ("x", "y") for bw, per in ((1, {"fast": 4.0, "safe": 2.0, "lossy": 9.0}),
                                                 (100, {"fast": 0.8, "safe": 0.9, "lossy": 9.0}))
            for c, s in per.items()]
    no_gpu = pd.DataFrame(columns=["model", "seq", "codec", "bandwidth_gbps", "speedup_pipelined"])
    table = choices(pd.DataFrame(rows), no_gpu, quality, 0.95).set_index("bandwidth_gbps")
    for bw, per in ((1, {"fast": 4.0, "safe": 2.0}), (100, {"fast": 0.8, "safe": 0.9})):
        d = fastest_meeting_floor({c: 1 / s for c, s in per.items()}, {c: True for c in per}, 1.0)
        assert table.loc[bw, "choice"] == d.choice and table.loc[bw, "best_codec"] == d.best
    assert list(table["choice"]) == ["fast", "raw"] and table.loc[100, "best_codec"] == "safe"
