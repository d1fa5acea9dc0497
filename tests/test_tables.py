"""Summary tables built from per-job quality results (synthetic results with known answers)."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from kvwire.errors import ConfigError
from kvwire.stages.tables import codecs_table, cosine_spearman, quality_by_model


def write_job(root, model, codec, rows, dataset="wiki", bin_=128):
    path = root / "results/quality" / model / dataset / str(bin_) / f"{codec}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"codec_id": codec, "codec": codec, "rows": rows}))
    return path


def prompt_rows(n, *, agreement, delta, cos, raw=1000, wire=500, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = agreement(i, rng)
        d = delta(i, rng)
        out.append({"prompt_id": f"p{i}", "token_agreement": a, "delta_ce": d, "greedy_match": a,
                    "first_divergence": 3, "key_cosine": cos(i, rng), "value_cosine": cos(i, rng),
                    "key_rel_mse": 0.0 if cos(i, rng) == 1.0 else 1e-3, "value_rel_mse": 0.0,
                    "raw_bytes": raw, "wire_bytes": wire})
    return out


def study(tmp_path, n=40):
    files = [write_job(tmp_path, "m", "identity",
                       prompt_rows(n, agreement=lambda i, r: 1.0, delta=lambda i, r: 0.0, cos=lambda i, r: 1.0,
                                   wire=1010)),
             write_job(tmp_path, "m", "good",
                       prompt_rows(n, agreement=lambda i, r: 0.99, delta=lambda i, r: 0.01 + r.normal(0, 1e-3),
                                   cos=lambda i, r: 0.999, wire=500, seed=1)),
             write_job(tmp_path, "m", "bad",
                       prompt_rows(n, agreement=lambda i, r: 0.7 + 0.1 * (i % 2), delta=lambda i, r: 0.5 + 0.1 * (i % 3),
                                   cos=lambda i, r: 0.95, wire=250, seed=2))]
    return files


def test_quality_by_model_means_intervals_and_pareto(tmp_path):
    table = quality_by_model(study(tmp_path), tmp_path / "out.csv", seed=3).set_index("codec")
    ident, good, bad = table.loc["identity"], table.loc["good"], table.loc["bad"]
    assert ident.token_agreement == 1.0 and ident.token_agreement_ci_lo == ident.token_agreement_ci_hi == 1.0
    assert ident.ppl_ratio == 1.0 and ident.ratio == pytest.approx(1000 / 1010)
    assert good.token_agreement == pytest.approx(0.99)
    assert good.delta_ce_ci_lo < good.delta_ce < good.delta_ce_ci_hi and good.delta_ce_ci_hi - good.delta_ce_ci_lo < 2e-3
    assert bad.token_agreement_ci_lo < 0.75 < bad.token_agreement_ci_hi
    assert bad.ppl_ratio == pytest.approx(math.exp(bad.delta_ce))
    assert table.loc[["identity", "good", "bad"], "pareto"].tolist() == [True, True, True]  # each trades ratio for quality
    again = quality_by_model(study(tmp_path), tmp_path / "out2.csv", seed=3)
    assert (tmp_path / "out.csv").read_bytes() == (tmp_path / "out2.csv").read_bytes()  # seeded
    assert len(pd.read_csv(tmp_path / "out.csv")) == 3 and len(again) == 3


def test_quality_by_model_needs_identity_and_matching_prompts(tmp_path):
    files = study(tmp_path)
    with pytest.raises(ConfigError, match="identity"):
        quality_by_model(files[1:], tmp_path / "x.csv", seed=0)
    short = write_job(tmp_path / "b", "m", "identity",
                      prompt_rows(5, agreement=lambda i, r: 1.0, delta=lambda i, r: 0.0, cos=lambda i, r: 1.0))
    with pytest.raises(Exception, match="one side only"):
        quality_by_model([short, files[1]], tmp_path / "x.csv", seed=0)


def test_cosine_spearman_and_codecs_table(tmp_path):
    files = study(tmp_path)
    sp = cosine_spearman(files, tmp_path / "sp.csv").iloc[0]
    assert sp.n_codecs == 2 and sp.n_pairs == 80  # identity is not lossy
    assert sp.rho_key_cosine_vs_delta_ce < -0.8 and sp.rho_key_cosine_vs_token_agreement > 0.8
    codecs = codecs_table(files, tmp_path / "codecs.csv").set_index("codec")
    assert codecs.loc["bad", "ratio"] == 4.0 and codecs.loc["identity", "key_rel_mse"] == 0.0
