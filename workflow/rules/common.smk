# Config validation, wildcard constraints and every input function of the workflow.
import os
import re
import sys
from pathlib import Path

# Jobs inherit this (see lib/kvwire/__init__.py for why it matters to CPU timings).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from snakemake.utils import validate

# The workflow uses the repository's own library, installed or not.
sys.path.insert(0, str(Path(workflow.basedir) / "lib"))
from kvwire.config import check_config, codec_spec, load_schema  # noqa: E402

SCHEMA = str(Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")
check_config(config, load_schema(SCHEMA))  # one clear line per bad key
validate(config, schema=SCHEMA)  # fills defaults

MODELS = list(config["models"])
DATASETS = list(config["datasets"])
BINS = [int(b) for b in config["prompts"]["bins"]]
CODECS = list(config["codecs"])


def _alternatives(names):
    return "|".join(
        re.escape(str(n)) for n in sorted(names, key=lambda n: -len(str(n)))
    )


wildcard_constraints:
    model=_alternatives(MODELS),
    dataset=_alternatives(DATASETS),
    bin=_alternatives(BINS),
    codec=_alternatives(CODECS),


def model_dir(wildcards):
    return f"resources/models/{wildcards.model}"


def model_facts(wildcards):
    return f"resources/models/{wildcards.model}/facts.json"


def model_spec(wildcards):
    return config["models"][wildcards.model]


def dataset_spec(wildcards):
    return config["datasets"][wildcards.dataset]


def prompt_docs(wildcards):
    return f"resources/prompts/{wildcards.dataset}.jsonl"


def kv_manifest(wildcards):
    return f"results/kv/{wildcards.model}/{wildcards.dataset}/{wildcards.bin}/manifest.json"


def wire_manifest(wildcards):
    return f"results/wire/{wildcards.model}/{wildcards.dataset}/{wildcards.bin}/{wildcards.codec}/manifest.json"


def reference_file(wildcards):
    return f"results/reference/{wildcards.model}/{wildcards.dataset}/{wildcards.bin}.safetensors"


def codec_of(wildcards):
    name, params = codec_spec(wildcards.codec, config["codecs"][wildcards.codec])
    return {"id": wildcards.codec, "name": name, "params": params}


def kv_manifests_of_model(wildcards):
    return expand(
        "results/kv/{model}/{dataset}/{bin}/manifest.json",
        model=wildcards.model,
        dataset=DATASETS,
        bin=BINS,
    )


def timing_tables_of_model(wildcards):
    return expand(
        "results/timing/cpu/{model}/{codec}.csv", model=wildcards.model, codec=CODECS
    )


def quality_files():
    return expand(
        "results/quality/{model}/{dataset}/{bin}/{codec}.json",
        model=MODELS,
        dataset=DATASETS,
        bin=BINS,
        codec=CODECS,
    )


def transfer_tables():
    return expand(
        "results/transfer/{model}/{kind}.csv",
        model=MODELS,
        kind=["sweep", "break_even"],
    )


def model_facts_all():
    return expand("resources/models/{model}/facts.json", model=MODELS)


def all_outputs():
    return [
        "results/tables/quality.csv",
        "results/tables/break_even.csv",
        "results/tables/break_even.tex",
        "results/tables/models.csv",
        "results/tables/codecs.csv",
        "results/tables/quality_by_model.csv",
        "results/tables/cosine_spearman.csv",
        "paper/figures/codec_errors.pdf",
        "paper/figures/codec_errors.png",
        "paper/figures/speedup_vs_bandwidth.pdf",
        "paper/figures/speedup_vs_bandwidth.png",
    ]
