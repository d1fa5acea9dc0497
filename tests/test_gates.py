"""Sanity gates: the table they produce and the error that stops a study (synthetic rows with known answers)."""

import pandas as pd
import pytest

from kvwire.errors import GateError
from kvwire.gates import evaluate_gates, require_gates


def rows(model, codec, agreements, **extra):
    base = {"delta_ce": 0.0, "greedy_match": 1.0, "key_rel_mse": 0.0, "value_rel_mse": 0.0}
    return [dict(base, model=model, codec=codec, token_agreement=a, **extra) for a in agreements]


def study(int8=(0.995, 0.99), kivi4=(0.96, 0.97), identity_ce=0.0):
    out = rows("m", "identity", [1.0, 1.0]) + rows("m", "int8", int8, delta_ce=0.01) + rows("m", "kivi4", kivi4)
    out[1]["delta_ce"] = identity_ce
    return pd.DataFrame(out)


def test_passing_study():
    table = evaluate_gates(study()).set_index("gate")
    assert table.passed.all() and list(table.index) == ["identity", "int8", "kivi4"]
    assert table.loc["int8", "value"] == pytest.approx(0.9925) and table.loc["int8", "threshold"] == 0.99
    require_gates(table.reset_index())


def test_each_failure_is_named():
    table = evaluate_gates(study(int8=(0.98, 0.99), identity_ce=1e-7)).set_index("gate")
    assert not table.loc["int8", "passed"] and not table.loc["identity", "passed"] and table.loc["kivi4", "passed"]
    assert "delta_ce differs on 1 of 2 prompts" in table.loc["identity", "detail"]
    with pytest.raises(GateError, match=r"m: int8 \(token_agreement >= 0.99\): measured 0.985") as err:
        require_gates(table.reset_index())
    assert "kivi4" not in str(err.value)


def test_missing_codec_fails_and_floors_are_configurable():
    data = study()
    data = data[data.codec != "kivi4"]
    table = evaluate_gates(data, {"int8": 0.999}).set_index("gate")
    assert "kivi4" not in table.index  # not asked for
    assert not table.loc["int8", "passed"]  # 0.9925 < 0.999
    table = evaluate_gates(data).set_index("gate")
    assert not table.loc["kivi4", "passed"] and "not in the study" in table.loc["kivi4", "detail"]


def test_gates_are_per_model():
    data = pd.concat([study(), study(kivi4=(0.9, 0.9)).assign(model="other")])
    table = evaluate_gates(data)
    failed = table[~table.passed]
    assert list(zip(failed.model, failed.gate)) == [("other", "kivi4")]


def test_a_waived_failure_is_reported_but_does_not_stop_the_study():
    data = study(int8=(0.97, 0.98))
    reason = "per-token scales set by outlier key channels; per-channel int8 measured 0.998"
    table = evaluate_gates(data, waivers={"m": {"int8": reason}, "other": {"kivi4": "not this model"}})
    row = table.set_index("gate").loc["int8"]
    assert not row.passed and row.waived == reason
    assert (table.set_index("gate").loc[["identity", "kivi4"], "waived"] == "").all()
    require_gates(table)  # no raise
    with pytest.raises(GateError, match="int8"):
        require_gates(evaluate_gates(data, waivers={"other": {"int8": reason}}))  # another model's waiver
