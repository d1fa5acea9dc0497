"""Quality-study figures: each writes a valid PDF and PNG, and the numbers behind them are right."""

import math

import numpy as np
import pandas as pd
import pytest

from kvwire.errors import ConfigError
from kvwire.plots import (cosine_vs_delta_ce, pareto_per_model, pareto_steps, sensitivity_heatmap,
                          sensitivity_matrix)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def by_model_table() -> pd.DataFrame:
    """Two models; model b did not run codec ``int2`` (a missing cell)."""
    rows = []
    codecs = {  # codec: (ratio, token agreement, delta_ce, key cosine, value cosine, pareto)
        "identity": (0.99, 1.0, 0.0, 1.0, 1.0, True),
        "int8": (1.9, 0.99, 0.01, 0.9999, 0.9998, True),
        "int4": (3.6, 0.9, 0.2, 0.995, 0.99, True),
        "int2": (6.5, 0.6, 1.5, 0.9, 0.85, True),
        "svd": (2.5, 0.8, 0.4, 0.98, 0.97, False),
    }
    for model, shift in (("a", 0.0), ("b", 0.05)):
        for codec, (ratio, agree, dce, kc, vc, pareto) in codecs.items():
            if model == "b" and codec == "int2":
                continue
            a = agree if codec == "identity" else agree - shift
            d = dce if codec == "identity" else dce + shift
            rows.append({"model": model, "codec": codec, "n_prompts": 20, "ratio": ratio,
                         "token_agreement": a, "token_agreement_ci_lo": a - 0.02 * (codec != "identity"),
                         "token_agreement_ci_hi": min(1.0, a + 0.02), "delta_ce": d,
                         "delta_ce_ci_lo": d - 0.01, "delta_ce_ci_hi": d + 0.01,
                         "key_cosine": kc, "value_cosine": vc, "pareto": pareto})
    return pd.DataFrame(rows)


def spearman_table() -> pd.DataFrame:
    return pd.DataFrame([{"model": m, "n_pairs": 80, "n_codecs": 4, "rho_key_cosine_vs_delta_ce": r,
                          "rho_key_cosine_vs_token_agreement": -r, "rho_value_cosine_vs_delta_ce": r / 2,
                          "rho_value_cosine_vs_token_agreement": -r / 2} for m, r in (("a", -0.9), ("b", -0.7))])


@pytest.fixture()
def csvs(tmp_path):
    by_model, spearman = tmp_path / "by_model.csv", tmp_path / "spearman.csv"
    by_model_table().to_csv(by_model, index=False)
    spearman_table().to_csv(spearman, index=False)
    return by_model, spearman


def assert_figures(pdf, png):
    head = png.read_bytes()
    assert head.startswith(PNG_MAGIC) and len(head) > 5000
    body = pdf.read_bytes()
    assert body.startswith(b"%PDF") and b"%%EOF" in body[-64:] and len(body) > 5000
    assert not list(pdf.parent.glob(".*.tmp"))  # atomic writes left nothing behind


def test_pareto_per_model_writes_figures(csvs, tmp_path):
    pdf, png = tmp_path / "fig/pareto.pdf", tmp_path / "fig/pareto.png"
    pareto_per_model(csvs[0], pdf, png)
    assert_figures(pdf, png)


def test_cosine_vs_delta_ce_writes_figures(csvs, tmp_path):
    pdf, png = tmp_path / "cos.pdf", tmp_path / "cos.png"
    # model b is absent from the Spearman table: it still plots (its legend says n/a)
    spearman_table().iloc[:1].to_csv(csvs[1], index=False)
    cosine_vs_delta_ce(csvs[0], csvs[1], pdf, png)
    assert_figures(pdf, png)


@pytest.mark.parametrize("metric", ["token_agreement", "delta_ce"])
def test_sensitivity_heatmap_writes_figures(csvs, tmp_path, metric):
    pdf, png = tmp_path / f"{metric}.pdf", tmp_path / f"{metric}.png"
    sensitivity_heatmap(csvs[0], pdf, png, metric=metric)
    assert_figures(pdf, png)


def test_sensitivity_matrix_drops_blanks_and_order():
    agree = sensitivity_matrix(by_model_table(), "token_agreement")
    assert list(agree.columns) == ["a", "b"]
    assert list(agree.index) == ["int8", "int4", "svd", "int2"]  # by mean drop; identity left out
    assert agree.loc["int4", "a"] == pytest.approx(0.1) and agree.loc["int4", "b"] == pytest.approx(0.15)
    assert agree.loc["int2", "a"] == pytest.approx(0.4)
    assert math.isnan(agree.loc["int2", "b"])  # never ran: blank, not zero
    dce = sensitivity_matrix(by_model_table(), "delta_ce")
    assert dce.loc["svd", "a"] == pytest.approx(0.4) and dce.loc["svd", "b"] == pytest.approx(0.45)
    assert math.isnan(dce.loc["int2", "b"])


def test_sensitivity_matrix_drop_is_relative_to_identity_not_to_perfect():
    table = by_model_table()
    worse_baseline = table.model == "a"
    table.loc[worse_baseline, "token_agreement"] -= 0.1  # identity itself at 0.9 (e.g. bf16 noise)
    matrix = sensitivity_matrix(table, "token_agreement")
    assert matrix.loc["int4", "a"] == pytest.approx(0.1)


def test_sensitivity_matrix_errors():
    table = by_model_table()
    no_ident = table[~((table.model == "b") & (table.codec == "identity"))]
    with pytest.raises(ConfigError, match="model 'b' has no identity row"):
        sensitivity_matrix(no_ident, "token_agreement")
    with pytest.raises(ConfigError, match="not one of"):
        sensitivity_matrix(table, "ppl")
    with pytest.raises(ConfigError, match="several rows"):
        sensitivity_matrix(pd.concat([table, table.iloc[:1]]), "delta_ce")


def test_sensitivity_heatmap_without_identity_names_the_model(tmp_path):
    table = by_model_table()
    table[~((table.model == "a") & (table.codec == "identity"))].to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ConfigError, match="'a'"):
        sensitivity_heatmap(tmp_path / "t.csv", tmp_path / "h.pdf", tmp_path / "h.png")
    assert not (tmp_path / "h.pdf").exists()


def test_pareto_steps_staircase():
    # shuffled input; the staircase holds the larger ratio's quality between neighbours
    xs, ys = pareto_steps([4.0, 1.0, 2.0], [0.5, 1.0, 0.9])
    np.testing.assert_array_equal(xs, [1.0, 1.0, 2.0, 2.0, 4.0])
    np.testing.assert_array_equal(ys, [1.0, 0.9, 0.9, 0.5, 0.5])
    xs, ys = pareto_steps([3.0], [0.7])
    assert xs.tolist() == [3.0] and ys.tolist() == [0.7]
    assert pareto_steps([], [])[0].size == 0
    with pytest.raises(ConfigError):
        pareto_steps([1.0, 2.0], [1.0])
