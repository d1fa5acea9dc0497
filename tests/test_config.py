"""Config validation: every bad key or type stops the run with a message naming it."""

import copy
import subprocess
import sys

import pytest
import yaml

from kvwire.config import check_config, codec_spec, load_schema
from kvwire.errors import ConfigError


@pytest.fixture(scope="module")
def schema(repo):
    return load_schema(repo / "workflow" / "schemas" / "config.schema.yaml")


@pytest.fixture(scope="module")
def default(repo):
    return yaml.safe_load((repo / "config" / "config.yaml").read_text())


@pytest.mark.parametrize("name", ["config.yaml", "smoke.yaml"])
def test_shipped_configs_are_valid(repo, schema, name):
    check_config(yaml.safe_load((repo / "config" / name).read_text()), schema)


@pytest.mark.parametrize("edit,needle", [
    (lambda c: c.update(bogus=1), "unknown config key 'bogus'"),
    (lambda c: c["prompts"].update(per_bin="eight"), "config key 'prompts.per_bin': 'eight' is not of type 'integer'"),
    (lambda c: c["prompts"].update(bins=[256, "x"]), "config key 'prompts.bins[1]'"),
    (lambda c: c["transfer"].update(bandwidths_gbps=[0]), "config key 'transfer.bandwidths_gbps[0]'"),
    (lambda c: c["models"]["smollm2-135m"].update(source="s3:x"), "config key 'models.smollm2-135m.source'"),
    (lambda c: c["models"]["smollm2-135m"].update(rev="main"), "unknown config key 'models.smollm2-135m.rev'"),
    (lambda c: c["datasets"]["gsm8k"].update(format="csv"), "config key 'datasets.gsm8k.format'"),
    (lambda c: c["codecs"].update(int9={}), "config key 'codecs.int9': unknown codec 'int9'"),
    (lambda c: c["codecs"]["zstd"]["params"].update(lvl=1), "config key 'codecs.zstd'.*unknown parameter"),
    (lambda c: c.pop("models"), "'models' is a required property"),
    (lambda c: c["models"].update({"bad/name": {"source": "hf:x"}}), "bad/name"),
    (lambda c: c["quality"].update(pairs=[["int8", "int8"]]), "compares a codec with itself"),
    (lambda c: c["quality"].update(pairs=[["int8"]]), "config key 'quality.pairs[0]'"),
    (lambda c: c["prompts"].update(chars_per_token=0.5), "config key 'prompts.chars_per_token'"),
    # NaN and infinities pass a schema's `type: number`: a NaN bandwidth once made a sweep row
    (lambda c: c["transfer"].update(bandwidths_gbps=[1.0, float("nan")]),
     "config key 'transfer.bandwidths_gbps[1]': nan is not a finite number"),
    (lambda c: c["transfer"].update(latency_us=float("inf")), "config key 'transfer.latency_us': inf is not a finite"),
    # a gate or waiver on a codec id the study does not define fails at planning, not after the study
    (lambda c: c.update(gates={"int9": 0.9}), "config key 'gates.int9': 'int9' is not a codec id"),
    (lambda c: c.update(gate_waivers={"gemma3-270m": {"kivi9": "a reason long enough to be one"}}),
     "config key 'gate_waivers.gemma3-270m.kivi9'"),
])
def test_bad_config_names_the_key(schema, default, edit, needle):
    cfg = copy.deepcopy(default)
    edit(cfg)
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")
                       if "*" not in needle else needle):
        check_config(cfg, schema)


def test_codec_spec_defaults_to_key():
    assert codec_spec("int8", {}) == ("int8", {})
    assert codec_spec("fast", {"codec": "zstd", "params": {"level": 1}}) == ("zstd", {"level": 1})


def test_snakemake_stops_on_bad_key(repo, default, tmp_path):
    cfg = copy.deepcopy(default)
    cfg["prompts"]["bogus"] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(path)], cwd=repo,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "unknown config key 'prompts.bogus'" in proc.stdout + proc.stderr


def test_pairs_outside_the_study_are_left_out(default):
    from kvwire.config import study_pairs

    cfg = copy.deepcopy(default)
    cfg["codecs"] = {"identity": {}, "int8": {}, "int8_channel": {"codec": "int8", "params": {"granularity": "channel"}}}
    kept, left_out = study_pairs(cfg)
    assert kept == [["int8", "int8_channel"]]
    assert ["int4", "int4_channel"] in left_out and len(kept) + len(left_out) == len(default["quality"]["pairs"])


def test_only_codecs_narrows_the_codec_set_and_its_pairs(schema, default):
    from kvwire.config import narrow_codecs, study_pairs

    cfg = copy.deepcopy(default)
    cfg["only_codecs"] = ["identity", "int8", "int8_channel", "kivi4"]
    check_config(cfg, schema)
    dropped = narrow_codecs(cfg)
    assert list(cfg["codecs"]) == ["identity", "int8", "int8_channel", "kivi4"]  # the config's order
    assert set(dropped) == set(default["codecs"]) - set(cfg["codecs"])
    assert study_pairs(cfg)[0] == [["int8", "int8_channel"]]
    # the workflow's validate() fills gates with the schema's default (int8, kivi4) before narrowing
    narrowed = copy.deepcopy(default)
    narrowed["gates"] = {"int8": 0.99, "kivi4": 0.95}
    narrowed["only_codecs"] = ["identity", "int4", "kivi4"]
    narrow_codecs(narrowed)
    assert narrowed["gates"] == {"kivi4": 0.95}  # int8's gate is left out with int8
    assert narrow_codecs(copy.deepcopy(default)) == []  # no key: every codec runs
    bad = copy.deepcopy(default)
    bad["only_codecs"] = ["int8", "int9"]
    with pytest.raises(ConfigError, match=r"only_codecs.*\['int9'\] not defined"):
        narrow_codecs(bad)
    bad["only_codecs"] = []
    with pytest.raises(ConfigError, match="only_codecs"):
        check_config(bad, schema)


def test_only_models_narrows_the_model_set(schema, default):
    from kvwire.config import narrow_models

    cfg = copy.deepcopy(default)
    last = list(default["models"])[-1]
    cfg["only_models"] = [last]
    check_config(cfg, schema)
    assert set(narrow_models(cfg)) == set(default["models"]) - {last}
    assert list(cfg["models"]) == [last] and cfg["models"][last] == default["models"][last]
    assert narrow_models(copy.deepcopy(default)) == []  # no key: every model runs
    bad = copy.deepcopy(default)
    bad["only_models"] = ["gpt-5"]
    with pytest.raises(ConfigError, match=r"only_models.*\['gpt-5'\] not defined"):
        narrow_models(bad)
    bad["only_models"] = []
    with pytest.raises(ConfigError, match="only_models"):
        check_config(bad, schema)


def test_the_default_configs_pin_every_carried_models_sha256(repo):
    """A pypi: package's own RECORD is no pin (whoever publishes a new version writes it): the default
    study pins each model's (assembled) GGUF, checked on every fetch."""
    import yaml

    for name in ("config.yaml", "paper.yaml", "qwen1.5b.yaml"):
        models = yaml.safe_load((repo / "config" / name).read_text())["models"]
        carried = {m: spec for m, spec in models.items() if spec["source"].startswith("pypi:")}
        assert carried and all(len(spec.get("sha256", "")) == 64 for spec in carried.values()), (name, carried)


# a config value read with a fallback (``config.get("seed", 0)``, ``opts.get("repeats", 5)``) is a second
# default beside the schema's, free to drift from it; Snakemake's validate() fills the schema's defaults.
# A fallback to another config value (a model's bins default to the study's, BINS) is not a default.
_FALLBACK = r"""\b(?:config|opts|ex|sm\.params\.\w+)(?:\[[^\]]+\])*\.get\(\s*["'][^"']+["']\s*,\s*(?:[-\d"'\[{(]|True|False|None)"""


def _fallbacks(text: str) -> list[str]:
    import re

    return [line.strip() for line in text.splitlines() if re.search(_FALLBACK, line)]


def test_config_defaults_live_only_in_the_schema(repo):
    files = [repo / "Snakefile", *sorted((repo / "workflow" / "rules").glob("*.smk")),
             *sorted((repo / "scripts").glob("*.py"))]
    found = {str(f.relative_to(repo)): _fallbacks(f.read_text()) for f in files}
    assert {f: lines for f, lines in found.items() if lines} == {}
    # the check itself sees what it must
    assert _fallbacks('seed=config.get("seed", 0),\nn = opts.get("repeats", 5)\nm.get("bins", BINS)\n'
                      'config["models"][m].get("bins", BINS)\nsm.params.transfer.get("wire_limits", {})') == [
        'seed=config.get("seed", 0),', 'n = opts.get("repeats", 5)', 'sm.params.transfer.get("wire_limits", {})']


def test_every_default_the_workflow_reads_is_in_the_schema(schema):
    """The keys the rules and scripts now read without a fallback have schema defaults."""
    props = schema["properties"]
    assert props["seed"]["default"] == 0 and props["torch_threads"]["default"] == 2
    for section, keys in {"extract": ["dtype", "device", "batch_size", "attention_stats", "obs_window"],
                          "quality": ["generate_tokens", "batch_size", "device"],
                          "timing": ["repeats", "warmup", "timer", "gpu_codecs"],
                          "transfer": ["latency_us", "link_rates_gbps", "wire_limits"]}.items():
        assert "default" in props[section] or section == "transfer", section
        for key in keys:
            assert "default" in props[section]["properties"][key], f"{section}.{key}"
    assert "default" in props["prompts"]["properties"]["chars_per_token"]
