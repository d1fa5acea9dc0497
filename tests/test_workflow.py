"""The Snakemake workflow: lint, formatting, the planned DAG, and the smoke study end to end."""

import os
import shutil
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kvwire import wire
from smk import E2E_DATASET, SMOKE_MINUTES, fresh_clone, job_counts, snakemake

def test_lint_is_clean(repo):
    out = snakemake(repo, "--lint")
    assert out.returncode == 0, out.stdout + out.stderr


def test_snakefmt_check(repo):
    out = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow"], cwd=repo,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def _merged(repo, names):
    """What Snakemake makes of several --configfile files: later files update earlier ones key by key."""
    from snakemake.utils import update_config

    cfg = {}
    for name in names:
        update_config(cfg, yaml.safe_load((repo / "config" / name).read_text()))
    return cfg


@pytest.mark.parametrize("names", [["config.yaml"], ["smoke.yaml"], ["paper.yaml"],
                                   ["config.yaml", "all-codecs.yaml"], ["config.yaml", "full.yaml"]])
def test_dry_run_plans_the_whole_fan_out(repo, names, tmp_path):
    """Every config the README lists plans `all` on a fresh clone (the smoke one runs to the end in
    test_smoke_study_end_to_end, the default one to a quality job in test_fresh_clone.py)."""
    cfg = _merged(repo, names)
    clone = fresh_clone(repo, tmp_path / "clone")
    out = snakemake(clone, "-n", "--configfile", *[f"config/{n}" for n in names], cwd=clone, snakefile=False)
    assert out.returncode == 0, out.stderr
    counts = job_counts(out.stdout)
    n_models, n_data, n_codecs = len(cfg["models"]), len(cfg["datasets"]), len(cfg["codecs"])
    n_bins = sum(len(m.get("bins", cfg["prompts"]["bins"])) for m in cfg["models"].values())
    assert counts["fetch_model"] == n_models
    assert counts["extract_kv"] == n_data * n_bins
    # encode, reference and quality take every dataset and bin of a model in one job
    assert counts["quality"] == counts["encode"] == n_models * n_codecs
    assert counts["reference"] == n_models  # the baseline runs once per model, not per codec
    assert counts["time_cpu"] == n_models * n_codecs
    assert counts["resource_usage"] == 1
    # the offload study is simulated for the models whose committed GPU calibration has every context
    # of the config (a context beyond a model's own is traced at its longest, SmolLM2's 8160)
    import json

    calibration = cfg.get("offload", {}).get("calibration", "results/offload/gpu/h200.calibration.json")
    measured = json.loads((repo / calibration).read_text())["models"]
    contexts = cfg.get("offload", {}).get("contexts", [])
    covered = [m for m in cfg["models"] if m in measured and all(
        str(c) in measured[m]["contexts"] or c > max(map(int, measured[m]["contexts"])) for c in contexts)]
    assert counts.get("offload_trace", 0) == len(covered)
    if names == ["config.yaml"]:  # the default: SmolLM2 and Gemma-3 are calibrated, Qwen is not
        assert covered == ["smollm2-135m", "gemma3-270m"]
    if "all-codecs.yaml" in names:
        from kvwire.codecs import known_names

        assert {spec.get("codec", name).split("+")[0] for name, spec in cfg["codecs"].items()} >= set(known_names())


def test_a_model_with_its_own_bins(repo, tmp_path):
    """A model whose context is short takes its own bins; the other models keep the study's."""
    cfg = yaml.safe_load((repo / "config" / "smoke.yaml").read_text())
    first = next(iter(cfg["models"]))
    cfg["models"][first]["bins"] = [64, 96]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = snakemake(repo, "-n", "--configfile", str(path), "-d", str(tmp_path / "w"))
    assert out.returncode == 0, out.stderr
    planned = set(re.findall(r"results/kv/([^/]+)/[^/]+/(\d+)/manifest.json", out.stdout))
    assert {b for m, b in planned if m == first} == {"64", "96"}
    assert {b for m, b in planned if m != first} == {str(b) for b in cfg["prompts"]["bins"]}


@pytest.mark.slow
@pytest.mark.timeout(2 * SMOKE_MINUTES * 60)  # the study, then a partial rerun; ~5 min on an idle 2-core box
def test_smoke_study_end_to_end(repo, smoke_study):
    work, cfg_path, cfg, env = smoke_study

    quality = pd.read_csv(work / "results/tables/quality_by_bin.csv")
    assert len(quality) == len(cfg["models"]) * len(cfg["datasets"]) * len(cfg["prompts"]["bins"]) * len(cfg["codecs"])
    ident = quality[quality.codec == "identity"]
    assert (ident.token_agreement == 1.0).all() and (ident.delta_ce == 0.0).all() and (ident.greedy_match == 1.0).all()
    # attention retention: the share of the original cache's decode-side attention the kept tokens hold
    assert (ident.attention_retention == 1.0).all()
    h2o = quality[quality.codec == "h2o"]
    assert ((h2o.attention_retention > 0.3) & (h2o.attention_retention < 1.0)).all()
    assert (h2o.attention_retention_min <= h2o.attention_retention).all()
    lossless = quality[quality.codec == "zstd"]
    assert (lossless.token_agreement == 1.0).all() and (lossless.delta_ce == 0.0).all()
    int8 = quality[quality.codec == "int8"]
    assert (int8.token_agreement >= 0.9).all() and (int8.key_cosine > 0.99).all()
    assert (quality[quality.codec == "int8+zstd"].ratio.values > int8.ratio.values).all()

    # ratios are those of the real files on disk
    for row in quality.itertuples():
        wdir = work / "results/wire" / row.model / row.codec
        files = sorted(wdir.glob(f"{row.dataset}-b{row.bin}-*.kvw"))
        assert len(files) == row.n_prompts
        raw = sum(wire.read_frames(f.read_bytes())[0].raw_bytes for f in files)
        assert row.ratio == pytest.approx(raw / sum(f.stat().st_size for f in files), rel=1e-5)

    # codecs.csv: one row per (model, codec), its ratio the byte-weighted ratio of the quality rows
    codecs = pd.read_csv(work / "results/tables/codecs.csv")
    assert len(codecs) == len(cfg["models"]) * len(cfg["codecs"])
    for row in codecs.itertuples():
        q = quality[(quality.model == row.model) & (quality.codec == row.codec)]
        assert q.n_prompts.sum() == row.n_prompts
        assert min(q.ratio) - 1e-9 <= row.ratio <= max(q.ratio) + 1e-9
    by = codecs.set_index(["model", "codec"])
    for model in cfg["models"]:
        for lossless in ("identity", "zstd", "lz4"):
            assert by.loc[(model, lossless), "key_rel_mse"] == 0 and by.loc[(model, lossless), "value_cosine"] == 1
        # fewer bits, more error and more compression: measured, not assumed
        assert by.loc[(model, "int8"), "key_rel_mse"] < by.loc[(model, "int4"), "key_rel_mse"]
        assert by.loc[(model, "kvquant2"), "ratio"] > by.loc[(model, "kvquant4"), "ratio"]
        assert by.loc[(model, "kvquant2"), "key_rel_mse"] > by.loc[(model, "kvquant4"), "key_rel_mse"]

    # the main table: codec x model with paired bootstrap intervals against identity
    main = pd.read_csv(work / "results/tables/quality.csv")
    assert len(main) == len(cfg["models"]) * len(cfg["codecs"])
    ident = main[main.codec == "identity"]
    assert (ident.token_agreement == 1).all() and (ident.delta_ce_ci_hi == 0).all() and (ident.ppl_ratio == 1).all()
    assert (main.token_agreement_ci_lo <= main.token_agreement).all() and (main.token_agreement <= main.token_agreement_ci_hi).all()
    assert main.groupby("model").pareto.any().all()
    gates = pd.read_csv(work / "results/tables/gates.csv")
    assert gates.passed.all() and set(gates.model) == set(cfg["models"]), gates.to_string()
    assert set(gates.gate) == {"identity", "int8", "kivi4"}
    spear = pd.read_csv(work / "results/tables/cosine_spearman.csv")
    assert set(spear.model) == set(cfg["models"]) and (spear.n_codecs >= 5).all()

    be = pd.read_csv(work / "results/tables/break_even.csv")
    assert set(be.codec) == set(cfg["codecs"])
    assert (be[be.codec == "identity"].break_even_gbps_sequential == 0).all()
    lossy = be[be.codec != "identity"]
    assert (lossy.break_even_gbps_pipelined >= lossy.break_even_gbps_sequential).all()
    assert "\\begin{tabular}" in (work / "results/tables/break_even.tex").read_text()

    # CPU timings: measured per layer with the configured threads, OpenMP spinning (the job owns the cores)
    timing = pd.read_csv(work / "results/timing/cpu/smollm2-135m/int8.csv")
    assert len(timing) == 30 and (timing.omp_wait_policy == "ACTIVE").all()
    assert (timing.threads == cfg["torch_threads"]).all() and (timing.encode_s > 0).all()

    models = pd.read_csv(work / "results/tables/models.csv").set_index("name")
    assert models.loc["smollm2-135m", "num_kv_heads"] == 3 and models.loc["smollm2-135m", "num_layers"] == 30

    import matplotlib.image as mpimg

    for fig in ("speedup_vs_bandwidth", "codec_errors", "pareto", "decision_flowchart"):
        png = mpimg.imread(work / f"results/figures/{fig}.png")
        assert png.shape[0] > 200 and png.shape[1] > 400 and png.std() > 0.05  # a drawn figure, not a blank

    # every model- and cache-loading job's time and exact peak memory, within what it declared
    usage = pd.read_csv(work / "results/tables/resources.csv")
    assert {"fetch_model", "extract_kv", "reference", "quality", "encode", "time_cpu"} <= set(usage.rule)
    assert len(usage[usage.rule == "quality"]) == len(cfg["models"]) * len(cfg["codecs"])
    loaded = usage[usage.rule.isin(["fetch_model", "extract_kv", "reference", "quality"])]
    assert (loaded.peak_rss_mb > 100).all() and (loaded.headroom >= 1).all(), loaded.to_string()
    assert usage.cpu.notna().all()

    # a rerun resumes: nothing left to do
    again = snakemake(work, "--cores", "2", "all", "--configfile", "config/smoke.yaml", "-n", cwd=work,
                      snakefile=False, env=env)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    # resume + determinism: delete one model's quality results and the table; only those jobs
    # rerun (Snakemake keeps a present, up-to-date target even when its inputs vanish) and the
    # quality table comes back byte-identical
    before = {t: (work / f"results/tables/{t}.csv").read_bytes() for t in ("quality_by_bin", "quality", "codecs")}
    shutil.rmtree(work / "results/quality/stories260k")
    for t in before:
        (work / f"results/tables/{t}.csv").unlink()
    redo = snakemake(work, "--cores", "2", "all", "--configfile", "config/smoke.yaml", cwd=work, snakefile=False,
                     timeout=SMOKE_MINUTES * 60, env=env)
    assert redo.returncode == 0, redo.stderr[-3000:]
    ran = redo.stdout + redo.stderr
    ran_rules = set(re.findall(r"^(?:local)?rule (\w+):", ran, re.M))
    assert "extract_kv" not in ran_rules and "fetch_model" not in ran_rules and "quality_by_bin" in ran_rules
    assert "reference" not in ran_rules  # the cached baseline is reused
    for t, content in before.items():
        assert (work / f"results/tables/{t}.csv").read_bytes() == content
    shutil.rmtree(work / "results/wire", ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(2 * SMOKE_MINUTES * 60)
def test_every_smoke_codec_on_real_caches(repo, smoke_study, tmp_path):
    """Every codec of config/smoke.yaml, through the workflow's own stage functions (encode, then
    quality against the cached reference), on the real caches and models the smoke study made."""
    import torch

    from kvwire.models import load_model
    from kvwire.stages.encode import encode_prompts
    from kvwire.stages.quality import score_codec
    from kvwire.config import codec_spec

    work, _, cfg, _ = smoke_study
    full = yaml.safe_load((repo / "config" / "smoke.yaml").read_text())
    full["codecs"] = yaml.safe_load((repo / "tests" / "smoke_codecs.yaml").read_text())["codecs"]
    # the reference job ran with the config's torch threads; float32 sums in another order would
    # differ from it in the last bit (identity's delta ce 3e-8 instead of 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(full["torch_threads"])
    opts, b = full["quality"], full["prompts"]["bins"][0]
    assert set(cfg["codecs"]) < set(full["codecs"])
    by_model = {}
    for model_name in cfg["models"]:
        model, _ = load_model(work / "resources/models" / model_name, dtype=torch.float32, device="cpu")
        kv = work / f"results/kv/{model_name}/{E2E_DATASET}/{b}/manifest.json"
        ref = work / f"results/reference/{model_name}.safetensors"  # the e2e study's one dataset and bin
        rows = {}
        for codec_id, entry in full["codecs"].items():
            name, params = codec_spec(codec_id, entry)
            out = tmp_path / model_name / codec_id
            wire_manifest = encode_prompts(kv, out / "manifest.json", codec_id=codec_id, codec_name=name,
                                           params=params)
            files = sorted(out.glob("*.kvw"))
            assert wire_manifest["wire_bytes"] == sum(f.stat().st_size for f in files)
            result = score_codec(work / "resources/models" / model_name / "facts.json", kv, out / "manifest.json",
                                 out / "quality.json", reference=ref, generate_tokens=opts["generate_tokens"],
                                 batch_size=opts["batch_size"], model=model)
            summary = result["summary"]
            assert result["ratio"] == wire_manifest["raw_bytes"] / wire_manifest["wire_bytes"]
            assert 0.0 <= summary["token_agreement"] <= 1.0 and 0.0 <= summary["greedy_match"] <= 1.0
            assert all(v == v for v in summary.values())  # no NaN anywhere
            # lossless decodes reuse the reference (identity, the exactness gate, always runs its forward)
            lossless = codec_id in ("zstd", "lz4")
            assert result["bit_identical_prompts"] == (result["n_prompts"] if lossless else 0), codec_id
            rows[codec_id] = dict(summary, ratio=result["ratio"])
        by_model[model_name] = rows
    torch.set_num_threads(threads)
    for model_name, rows in by_model.items():
        for lossless in ("identity", "zstd", "lz4"):
            assert rows[lossless]["token_agreement"] == 1.0 and rows[lossless]["delta_ce"] == 0.0
            assert rows[lossless]["key_rel_mse"] == 0.0
        lossy = [c for c in rows if c not in ("identity", "zstd", "lz4")]
        # (runtime SVD cannot compress stories260K's 8-wide heads: its ratio there is below 1, honestly)
        assert all(rows[c]["ratio"] > 1.2 for c in lossy if c != "svd_runtime"), {c: rows[c]["ratio"] for c in lossy}
        assert all(rows[c]["key_rel_mse"] > 0 or rows[c]["value_rel_mse"] > 0 for c in lossy
                   if c not in ("streaming_llm", "h2o", "snapkv", "pyramidkv", "keynorm"))
        # kept tokens of the pure token-selection codecs are bit-exact copies
        for c in ("streaming_llm", "h2o", "snapkv", "pyramidkv", "keynorm"):
            assert rows[c]["key_rel_mse"] == 0.0 and rows[c]["value_rel_mse"] == 0.0
        # a lossless stage after a lossy codec only adds ratio
        assert rows["int8+zstd"]["ratio"] > rows["int8"]["ratio"]
        assert rows["int8"]["key_rel_mse"] < rows["int4"]["key_rel_mse"] < rows["kvquant2"]["key_rel_mse"]
    smol = by_model["smollm2-135m"]
    assert smol["guardband_8x"]["ratio"] >= 8.0  # reachable on SmolLM2's 128-token caches
    # KIVI's 32-channel value groups (head_dim 64: two per token) cost scale bytes and buy value precision
    assert smol["kivi4"]["ratio"] < smol["kivi4_tokenwise"]["ratio"]
    assert smol["kivi4"]["value_rel_mse"] < smol["kivi4_tokenwise"]["value_rel_mse"]
    assert smol["kivi4"]["key_rel_mse"] == smol["kivi4_tokenwise"]["key_rel_mse"]  # keys are grouped as before
    # CacheGen's entropy coder beats its own codes without it (checked per codec in test_cachegen_svd)
    assert smol["cachegen"]["ratio"] > 2.0


def test_gpu_timing_rule_is_planned_on_request_only(repo, tmp_path):
    """time_gpu asks for a GPU and is never part of `all` (its table is measured on a GPU node and committed)."""
    config = ("--configfile", str(repo / "config" / "smoke.yaml"), "-d", str(tmp_path))
    out = snakemake(repo, "-n", *config)
    assert out.returncode == 0, out.stderr
    assert "time_gpu" not in job_counts(out.stdout)
    out = snakemake(repo, "-n", "results/timing/gpu/runs/h200.csv", *config)
    assert out.returncode == 0, out.stderr
    assert re.findall(r"^rule (\w+):", out.stdout, re.M) == ["time_gpu"]  # that job alone
    assert re.search(r"resources:.*\bgpu=1\b", out.stdout)
