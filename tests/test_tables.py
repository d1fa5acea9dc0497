"""Summary tables built from per-job quality results (synthetic results with known answers)."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from kvwire.errors import ConfigError
from kvwire.stages.tables import (attention_retention_table, codecs_table, cosine_spearman, quality_by_bin,
                                  quality_by_model, quality_pairs)


def write_job(root, model, codec, rows, cpu_seconds=4.0):
    path = root / "results/quality" / model / f"{codec}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"codec_id": codec, "codec": codec, "rows": rows, "n_prompts": len(rows),
                                "cpu_seconds": cpu_seconds, "wall_seconds": cpu_seconds / 2,
                                "cpu_seconds_per_prompt": cpu_seconds / len(rows),
                                "reference_cpu_seconds": 2.0 * len(rows)}))
    return path


def prompt_rows(n, *, agreement, delta, cos, raw=1000, wire=500, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = agreement(i, rng)
        d = delta(i, rng)
        out.append({"prompt_id": f"p{i}", "dataset": "wiki", "bin": 128 if i % 2 else 256, "token_agreement": a, "delta_ce": d, "greedy_match": a,
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
    assert table.n_documents.tolist() == [40, 40, 40]  # every prompt its own document


def test_prompts_of_one_document_are_resampled_together(tmp_path):
    # the same 40 rows, but as 10 documents x 4 bins (nested prefixes, ids repeat across bins):
    # "bad"'s per-prompt spread is shared within a document, so its interval must widen
    def nested(n, **kw):
        rows = prompt_rows(n, **kw)
        for i, r in enumerate(rows):
            r["prompt_id"], r["bin"] = f"p{i // 4}", 128 * (1 + i % 4)
        return rows

    def job(root, codec, agreement, wire):
        return write_job(root, "m", codec, nested(40, agreement=agreement, delta=lambda i, r: 0.0,
                                                  cos=lambda i, r: 1.0, wire=wire))

    spread = lambda i, r: 0.6 + 0.04 * (i // 4)  # noqa: E731  constant within a document
    flat = [job(tmp_path / "flat", "identity", lambda i, r: 1.0, 1000),
            job(tmp_path / "flat", "bad", spread, 250)]
    clustered = quality_by_model(flat, tmp_path / "c.csv", seed=1).set_index("codec").loc["bad"]
    assert clustered.n_prompts == 40 and clustered.n_documents == 10
    single = [write_job(tmp_path / "s", "m", c, prompt_rows(40, agreement=a, delta=lambda i, r: 0.0,
                                                            cos=lambda i, r: 1.0, wire=w))
              for c, a, w in (("identity", lambda i, r: 1.0, 1000), ("bad", spread, 250))]
    plain = quality_by_model(single, tmp_path / "p.csv", seed=1).set_index("codec").loc["bad"]
    assert plain.token_agreement == pytest.approx(clustered.token_agreement)
    width = lambda row: row.token_agreement_ci_hi - row.token_agreement_ci_lo  # noqa: E731
    assert width(clustered) > 1.5 * width(plain)


def test_quality_pairs_compares_codecs_on_the_same_documents(tmp_path):
    files = study(tmp_path)
    table = quality_pairs(files, tmp_path / "pairs.csv", [["good", "bad"], ["identity", "good"]], seed=0)
    good_bad = table.set_index(["codec_a", "codec_b"]).loc[("good", "bad")]
    assert good_bad.n_prompts == 40 and good_bad.n_documents == 40
    assert good_bad.token_agreement_diff == pytest.approx(0.99 - 0.75)
    assert good_bad.token_agreement_ci_lo > 0 and good_bad.token_agreement_significant
    assert good_bad.ratio_a == pytest.approx(2.0) and good_bad.ratio_b == pytest.approx(4.0)
    ident_good = table.set_index(["codec_a", "codec_b"]).loc[("identity", "good")]
    assert ident_good.token_agreement_diff == pytest.approx(0.01) and ident_good.token_agreement_significant
    with pytest.raises(ConfigError, match=r"names codecs no quality record holds: \['kivi9'\]"):
        quality_pairs(files, tmp_path / "x.csv", [["good", "kivi9"]], seed=0)
    with pytest.raises(ConfigError, match="not a pair"):
        quality_pairs(files, tmp_path / "x.csv", [["good", "good"]], seed=0)


def test_pareto_needs_a_significant_quality_difference(tmp_path):
    # "near" matches "good"'s ratio (500 wire bytes, +1 byte) with agreement indistinguishable from it:
    # it is a tie, so neither puts the other off the front; "worse" (same ratio, clearly lower) is off
    files = study(tmp_path)
    noisy = lambda i, r: 0.99 + (0.004 if i % 2 else -0.0039)  # noqa: E731  mean 0.99005, spread +-0.004
    files.append(write_job(tmp_path, "m", "near", prompt_rows(40, agreement=noisy, delta=lambda i, r: 0.01,
                                                               cos=lambda i, r: 0.999, wire=500)))
    files.append(write_job(tmp_path, "m", "worse", prompt_rows(40, agreement=lambda i, r: 0.9, delta=lambda i, r: 0.1,
                                                                cos=lambda i, r: 0.99, wire=500)))
    table = quality_by_model(files, tmp_path / "q.csv", seed=0).set_index("codec")
    assert table.loc["near"].token_agreement > table.loc["good"].token_agreement  # by a hair
    assert table.loc["good", "pareto"] and table.loc["near", "pareto"] and not table.loc["worse", "pareto"]


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


def test_cosine_spearman_without_token_dropping_codecs(tmp_path):
    # a dropping codec: exact kept tokens (cosine 1) yet a large delta CE -- the blind spot; without it
    # the dense codecs' cosine ranks delta CE perfectly, with it the correlation weakens
    def rows(agree, delta, cos, retention):
        out = prompt_rows(20, agreement=agree, delta=delta, cos=cos)
        for r in out:
            r.update(attention_retention=retention, attention_retention_min=retention)
        return out

    files = [write_job(tmp_path, "m", "identity", rows(lambda i, r: 1.0, lambda i, r: 0.0, lambda i, r: 1.0, 1.0)),
             write_job(tmp_path, "m", "q", rows(lambda i, r: 0.99, lambda i, r: 0.01 + 0.001 * i,
                                                lambda i, r: 0.999 - 0.0001 * i, 1.0)),
             write_job(tmp_path, "m", "drop", rows(lambda i, r: 0.8, lambda i, r: 0.5 + 0.01 * i,
                                                   lambda i, r: 1.0, 0.6))]
    sp = cosine_spearman(files, tmp_path / "sp.csv").iloc[0]
    assert sp.n_codecs == 2 and sp.n_codecs_dense == 1
    assert sp.rho_key_cosine_vs_delta_ce_dense == pytest.approx(-1.0)
    assert sp.rho_key_cosine_vs_delta_ce > -0.2  # the dropping codec's exact cosines sit with the worst delta CE


def test_attention_retention_per_layer_for_codecs_that_drop_tokens(tmp_path):
    def with_retention(rows, per_layer):
        for i, r in enumerate(rows):
            layers = per_layer(i)
            r.update(attention_retention=sum(layers) / len(layers), attention_retention_min=min(layers),
                     attention_retention_layers=layers)
        return rows

    n = 6
    dense = lambda i: [1.0, 1.0, 1.0]  # noqa: E731
    pruned = lambda i: [0.9, 0.5 + 0.05 * i, 0.8]  # noqa: E731
    files = [write_job(tmp_path, "m", c, with_retention(
        prompt_rows(n, agreement=lambda i, r: 1.0, delta=lambda i, r: 0.0, cos=lambda i, r: 1.0), f))
        for c, f in (("identity", dense), ("int8", dense), ("snapkv", pruned))]
    table = attention_retention_table(files, tmp_path / "ret.csv")
    assert set(table.codec) == {"snapkv"}  # dense codecs keep every token: not listed
    layer1 = table.set_index("layer").loc[1]
    assert layer1.n_prompts == n and layer1.attention_retention_min == pytest.approx(0.5)
    assert layer1.attention_retention == pytest.approx(np.mean([0.5 + 0.05 * i for i in range(n)]))
    assert table.set_index("layer").loc[2, "attention_retention"] == pytest.approx(0.8)
    summary = quality_by_model(files, tmp_path / "q.csv", seed=0).set_index("codec")
    assert summary.loc["snapkv", "attention_retention_min"] == pytest.approx(np.mean([min(pruned(i)) for i in range(n)]))
    assert summary.loc["int8", "attention_retention"] == 1.0
    # no attention recorded anywhere: an empty table with its columns, and blank summary columns
    bare = attention_retention_table(study(tmp_path / "bare"), tmp_path / "bare.csv")
    assert bare.empty and list(pd.read_csv(tmp_path / "bare.csv").columns)[-1] == "attention_retention_min"
    assert quality_by_model(study(tmp_path / "bare2"), tmp_path / "q2.csv", seed=0).attention_retention.isna().all()


def test_quality_by_bin_means_per_bin_and_the_cost_table(tmp_path):
    files = study(tmp_path, n=10)
    table = quality_by_bin(files, tmp_path / "bins.csv", tmp_path / "cost.csv")
    bad = table[table.codec == "bad"].set_index("bin")
    # odd prompts sit in bin 128 with agreement 0.8, even ones in bin 256 with 0.7
    assert bad.loc[128, "token_agreement"] == pytest.approx(0.8) and bad.loc[256, "token_agreement"] == pytest.approx(0.7)
    assert bad.loc[128, "n_prompts"] == 5 and bad.loc[128, "ratio"] == 4.0
    assert math.isnan(bad.loc[128, "attention_retention"])  # not recorded: blank, not zero
    cost = pd.read_csv(tmp_path / "cost.csv").set_index("codec")
    assert cost.loc["good", "cpu_seconds_per_prompt"] == pytest.approx(0.4)
    assert cost.loc["good", "reference_cpu_seconds_per_prompt"] == pytest.approx(2.0)
    quality_by_bin(files, tmp_path / "bins2.csv", tmp_path / "cost2.csv")
    assert (tmp_path / "bins.csv").read_bytes() == (tmp_path / "bins2.csv").read_bytes()


def test_model_sensitivity_joins_shape_cache_statistics_and_drops(tmp_path):
    from kvwire.kvstats import STATS
    from kvwire.stages.tables import model_sensitivity

    kvstats = []
    for model, outliers in (("a", 0.1), ("b", 0.0)):
        rows = [dict({s: 1.0 for s in STATS}, model=model, layer=i, n_prompts=4,
                     key_outlier_channel_share=outliers * i, key_rms=1.0 + i) for i in range(3)]
        path = tmp_path / f"{model}.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        kvstats.append(path)
    models = tmp_path / "models.csv"
    pd.DataFrame([{"name": "a", "architecture": "A", "num_layers": 3, "num_heads": 9, "num_kv_heads": 3, "head_dim": 64},
                  {"name": "b", "architecture": "B", "num_layers": 3, "num_heads": 4, "num_kv_heads": 1,
                   "head_dim": 256}]).to_csv(models, index=False)
    quality = tmp_path / "quality.csv"
    pd.DataFrame([{"model": m, "codec": c, "token_agreement": v} for m, c, v in
                  [("a", "identity", 1.0), ("a", "int4", 0.80), ("a", "int4_channel", 0.90),
                   ("b", "identity", 1.0), ("b", "int4", 0.95), ("b", "int4_channel", 0.94)]]).to_csv(quality, index=False)
    table = model_sensitivity(kvstats, models, quality, tmp_path / "out.csv").set_index("model")
    assert table.loc["a", "gqa_ratio"] == 3 and table.loc["b", "gqa_ratio"] == 4
    assert table.loc["a", "key_outlier_channel_share"] == pytest.approx(0.1)  # mean over layers 0, 0.1, 0.2
    assert table.loc["a", "key_outlier_channel_share_max"] == pytest.approx(0.2)
    assert table.loc["a", "drop_int4"] == pytest.approx(0.2) and table.loc["b", "drop_int4_channel"] == pytest.approx(0.06)
    assert table.loc["a", "per_token_penalty_int4"] == pytest.approx(0.1)
    assert table.loc["b", "per_token_penalty_int4"] == pytest.approx(-0.01)
    assert "per_token_penalty_int8" not in table  # that pair is not in the study
    with pytest.raises(ConfigError, match="identity"):
        pd.read_csv(quality).query("codec != 'identity'").to_csv(tmp_path / "q2.csv", index=False)
        model_sensitivity(kvstats, models, tmp_path / "q2.csv", tmp_path / "out2.csv")
