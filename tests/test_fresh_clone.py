"""The README's first command, as a newcomer meets it: a fresh clone with no ../shared beside it and
no network but the package index. The default study's DAG runs to its prompts and a quality job
(on a reduced copy of config/config.yaml: one model, one short bin, two codecs), errors land in the
failing job's log, a killed run says how to resume, and the study's own tables never touch the
published ones. config/smoke.yaml runs `all` to the end in test_workflow.py, also in a fresh clone."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from smk import fresh_clone, snakemake

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _env():
    return {"KVWIRE_CACHE": os.environ["KVWIRE_TEST_CACHE"], **OFFLINE}


def _reduced_default(clone):
    """config/config.yaml with SmolLM2 only, one 256-token bin of two prompts per dataset and two
    codecs; everything else (datasets, their pins, quality and extraction settings) as shipped."""
    cfg = yaml.safe_load((clone / "config" / "config.yaml").read_text())
    cfg["models"] = {"smollm2-135m": cfg["models"]["smollm2-135m"]}
    cfg["prompts"].update(bins=[256], per_bin=2)
    cfg["codecs"] = {"identity": {}, "int8": {}}
    cfg["quality"].update(generate_tokens=8, batch_size=4)
    cfg["offload"]["contexts"] = [1024]
    cfg.pop("gate_waivers", None)
    path = clone / "config" / "fresh.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, cfg


@pytest.fixture(scope="module")
def default_clone(repo, tmp_path_factory):
    clone = fresh_clone(repo, tmp_path_factory.mktemp("fresh") / "clone")
    path, cfg = _reduced_default(clone)
    # one job of every per-model rule: prompts, extraction, reference, encode, quality, CPU timing,
    # transfer model, KV statistics, offload trace (the summaries need every model and codec)
    target = "results/quality/smollm2-135m/int8.json"
    others = ["results/timing/cpu/smollm2-135m/int8.csv", "results/transfer/smollm2-135m/sweep.csv",
              "results/kvstats/smollm2-135m.csv", "results/offload/traces/smollm2-135m/manifest.json"]
    out = snakemake(clone, "--cores", "8", target, *others, "--configfile", str(path.relative_to(clone)),
                    cwd=clone, snakefile=False, env=_env(), timeout=900)
    return clone, path, cfg, target, out


@pytest.mark.slow
def test_the_default_study_runs_to_its_prompts_and_a_quality_job(default_clone):
    clone, path, cfg, target, out = default_clone
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    assert not (clone.parent / "shared").exists()
    # the prompts come from the carried, pinned copies
    for name in cfg["datasets"]:
        rows = [json.loads(line) for line in (clone / f"resources/prompts/{name}.jsonl").read_text().splitlines()]
        # per_bin documents and two spares for the one bin, none sharing an article or problem
        assert len(rows) == 2 + 2 and all(r["source"].endswith(cfg["datasets"][name]["source"].removeprefix("file:"))
                                          for r in rows), name
        units = [u for r in rows for u in r["units"]]
        assert len(units) == len(set(units)) and {r["bin"] for r in rows} == {256}, name
    quality = json.loads((clone / target).read_text())
    assert quality["n_prompts"] == 2 * len(cfg["datasets"]) and quality["ratio"] > 1.9
    assert 0.9 <= quality["summary"]["token_agreement"] <= 1.0
    # the wire containers were deleted once the quality job had read them (storage.keep_wire: false)
    assert not (clone / "results/wire/smollm2-135m/int8").exists()
    # the run's jobs could never claim more memory than the machine had available when it started
    from kvwire.resources import available_mem_mb

    provided = int(re.search(r'Provided resources: mem_mb=(?:Resource\("mem_mb", )?(\d+)', log).group(1))
    total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    assert 1000 < provided < total_mb and abs(provided - available_mem_mb()) < 0.25 * total_mb
    # the GPU notice came once, from the workflow, not once per extraction job (each job's log has it)
    assert log.count("no GPU visible") == 1
    extract_logs = sorted((clone / "logs/extract/smollm2-135m").rglob("*.log"))
    assert len(extract_logs) == len(cfg["datasets"]) and all("no GPU visible" in p.read_text() for p in extract_logs)
    # nothing left to do for the same target
    again = snakemake(clone, "-n", "--cores", "8", target, "--configfile", "config/fresh.yaml", cwd=clone,
                      snakefile=False, env=_env())
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_every_job_records_its_peak_memory_against_what_it_declared(default_clone):
    clone, _, cfg, _, out = default_clone
    assert out.returncode == 0
    from kvwire.stages.usage import read_benchmark, read_usage

    for step in ("models/smollm2-135m", "reference/smollm2-135m", "quality/smollm2-135m/int8",
                 "encode/smollm2-135m/int8", "extract/smollm2-135m/wikitext2/256", "timing/cpu/smollm2-135m/int8",
                 "kvstats/smollm2-135m", "offload/trace_smollm2-135m"):
        bench = read_benchmark(clone / f"results/benchmarks/{step}.tsv")
        assert bench["s"] > 0, step
        usage = read_usage(clone / f"logs/{step}.log")
        assert usage and usage["peak_rss_mb"] > 100, (step, usage)  # torch alone holds more than that
        # the declared figure covers the measured peak (docs/OPERATIONS.md#memory)
        assert usage["declared_mem_mb"] >= usage["peak_rss_mb"], (step, usage)
        rules = {"models": "fetch_model", "extract": "extract_kv", "timing": "time_cpu", "kvstats": "kv_statistics",
                 "offload": "offload_trace"}
        assert usage["rule"] == rules.get(step.split("/")[0], step.split("/")[0])
    # the study wrote its own results; the published tables are untouched
    assert not (clone / "results/tables").exists() or not any((clone / "results/tables").iterdir())


@pytest.mark.slow  # builds the paper or runs the workflow in a fresh clone
def test_a_failing_job_writes_its_traceback_to_its_log_and_snakemake_names_it(repo, tmp_path):
    clone = fresh_clone(repo, tmp_path / "clone")
    with (clone / "data/gsm8k/test.jsonl").open("ab") as fh:  # a changed copy: its pinned hash fails
        fh.write(b"\n")
    out = snakemake(clone, "--cores", "2", "--keep-going", "resources/prompts/gsm8k.jsonl",
                    "resources/prompts/wikitext2.jsonl", cwd=clone, snakefile=False, env=OFFLINE, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    job_log = (clone / "logs/prompts/gsm8k.log").read_text()
    assert "Traceback" in job_log and "PromptSourceError" in job_log and "sha256" in job_log
    # the console says it in one line that names the log, and Snakemake's error names it too
    assert re.search(r"kvwire: error: dataset .*sha256 .* \(traceback in logs/prompts/gsm8k.log\)", text)
    assert re.search(r"Error in rule build_prompts:[\s\S]*logs/prompts/gsm8k.log", text)
    # the other dataset's job finished: nothing already computed is lost
    assert (clone / "resources/prompts/wikitext2.jsonl").stat().st_size > 0
    assert not (clone / "resources/prompts/gsm8k.jsonl").exists()


@pytest.mark.slow  # builds the paper or runs the workflow in a fresh clone
def test_a_killed_run_is_told_how_to_resume(repo, tmp_path):
    """After kill -9 Snakemake's lock stays behind; the next run says what to do (--unlock), as the
    README's "Using it" says, and after --unlock the run resumes."""
    clone = fresh_clone(repo, tmp_path / "clone")
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "resources/prompts/wikitext2.jsonl"]
    env = {**os.environ, **OFFLINE, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(cmd, cwd=clone, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    locks = clone / ".snakemake" / "locks"
    deadline = time.time() + 60
    while time.time() < deadline and not (locks.exists() and any(locks.iterdir())):
        time.sleep(0.1)
    assert locks.exists() and any(locks.iterdir()), "the run never took its lock"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    again = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "--unlock" in again.stdout + again.stderr
    readme = (repo / "README.md").read_text()
    assert "--unlock" in readme.split("## Using it", 1)[1]
    assert subprocess.run(cmd + ["--unlock"], cwd=clone, env=env, capture_output=True, timeout=120).returncode == 0
    done = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
