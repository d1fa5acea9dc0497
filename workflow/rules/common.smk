# Config validation, wildcard constraints and every input function of the workflow.
import glob
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
from kvwire.paper.macros import TABLES as MACRO_TABLE_NAMES  # noqa: E402

SCHEMA = str(Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")
check_config(config, load_schema(SCHEMA))  # one clear line per bad key
validate(config, schema=SCHEMA)  # fills defaults

MODELS = list(config["models"])
DATASETS = list(config["datasets"])
BINS = [int(b) for b in config["prompts"]["bins"]]
ALL_BINS = sorted(
    {int(b) for m in config["models"].values() for b in m.get("bins", BINS)}
)
CODECS = list(config["codecs"])


def _alternatives(names):
    return "|".join(
        re.escape(str(n)) for n in sorted(names, key=lambda n: -len(str(n)))
    )


wildcard_constraints:
    model=_alternatives(MODELS),
    dataset=_alternatives(DATASETS),
    bin=_alternatives(ALL_BINS),
    codec=_alternatives(CODECS),
    gpu="[A-Za-z0-9][A-Za-z0-9_-]*",
    link="loopback|veth[0-9.]+",
    rate="[0-9.]+",
    table="[a-z_]+",


def model_dir(wildcards):
    return f"resources/models/{wildcards.model}"


def model_facts(wildcards):
    return f"resources/models/{wildcards.model}/facts.json"


REPO = Path(workflow.basedir)


def _from_repo(source):
    """``file:`` and ``local:`` paths in config files are relative to the repository root (where
    config/ lives), so data/ resolves the same whatever the working directory (-d).
    """
    scheme, sep, path = source.partition(":")
    if scheme in ("file", "local") and sep and not Path(path).is_absolute():
        return f"{scheme}:{(REPO / path).resolve()}"
    return source


def model_spec(wildcards):
    spec = dict(config["models"][wildcards.model])
    spec["source"] = _from_repo(spec["source"])
    return spec


def dataset_spec(wildcards):
    spec = dict(config["datasets"][wildcards.dataset])
    sources = spec["source"]
    spec["source"] = (
        [_from_repo(s) for s in sources]
        if isinstance(sources, list)
        else _from_repo(sources)
    )
    return spec


def prompt_docs(wildcards):
    return f"resources/prompts/{wildcards.dataset}.jsonl"


def bins_of(model):
    """The model's length bins: its own ``bins`` (a short context) or the study's."""
    return [int(b) for b in config["models"][model].get("bins", BINS)]


def kv_manifests_of_model(wildcards):
    """Every dataset and bin of one model: encode, reference and quality jobs take them all (a job
    per (model, codec) pays start-up once and batches each bin's prompts across datasets).
    """
    return expand(
        "results/kv/{model}/{dataset}/{bin}/manifest.json",
        model=wildcards.model,
        dataset=DATASETS,
        bin=bins_of(wildcards.model),
    )


def wire_manifest(wildcards):
    return f"results/wire/{wildcards.model}/{wildcards.codec}/manifest.json"


def reference_file(wildcards):
    return f"results/reference/{wildcards.model}.safetensors"


def codec_of(wildcards):
    name, params = codec_spec(wildcards.codec, config["codecs"][wildcards.codec])
    return {"id": wildcards.codec, "name": name, "params": params}


def kv_manifests_for_timing(wildcards):
    """Codec speed depends on the cache's shape, not its text: the first dataset's bins are timed."""
    return expand(
        "results/kv/{model}/{dataset}/{bin}/manifest.json",
        model=wildcards.model,
        dataset=DATASETS[0],
        bin=bins_of(wildcards.model),
    )


def timing_tables_of_model(wildcards):
    return expand(
        "results/timing/cpu/{model}/{codec}.csv", model=wildcards.model, codec=CODECS
    )


def quality_files():
    return expand("results/quality/{model}/{codec}.json", model=MODELS, codec=CODECS)


def transfer_tables():
    return expand(
        "results/transfer/{model}/{kind}.csv",
        model=MODELS,
        kind=["sweep", "break_even"],
    )


def cpu_timing_options():
    """The timing options the CPU timing reads (the gpu_* ones belong to time_gpu: changing them must
    not rerun every CPU timing job)."""
    return {
        k: v for k, v in config.get("timing", {}).items() if not k.startswith("gpu_")
    }


def gpu_timing_tables():
    """The GPU timing tables measured on lent GPUs and committed (the rule time_gpu makes one on a GPU
    node; nothing in `all` reruns it): results/timing/gpu/<gpu>.csv of the working directory, else the
    repository's cached ones (a run in a scratch directory, `-d`, summarises those)."""
    # not ancient(): a newly committed table must refresh the summaries (cheap, deterministic)
    here = sorted(glob.glob("results/timing/gpu/*.csv"))
    if here:
        return here
    return sorted(
        glob.glob(str(Path(workflow.basedir) / "results" / "timing" / "gpu" / "*.csv"))
    )


def gpu_outputs():
    """The GPU summaries and figure, where any GPU timing table exists."""
    if not gpu_timing_tables():
        return []
    return [
        "results/tables/gpu_kernels.csv",
        "results/tables/gpu_break_even.csv",
        "results/tables/break_even_shift.csv",
        "results/tables/break_even_all.csv",
        "results/tables/gpu_transfer_sweep.csv",
        "paper/figures/gpu_kernels.pdf",
        "paper/figures/gpu_kernels.png",
        "paper/figures/break_even_shift.pdf",
        "paper/figures/break_even_shift.png",
        "paper/figures/speedup_cpu_gpu.pdf",
        "paper/figures/speedup_cpu_gpu.png",
    ]


def decision_outputs():
    """The decision table and flowchart: they need the GPU speed-up sweep, so GPU timings."""
    if not gpu_timing_tables():
        return []
    return [
        "results/tables/decision.csv",
        "paper/figures/decision_flowchart.pdf",
        "paper/figures/decision_flowchart.png",
    ]


def first_kv_manifest(wildcards):
    """The largest bin's extraction of the first dataset: its first prompt is the end-to-end payload."""
    b = max(bins_of(wildcards.model))
    return f"results/kv/{wildcards.model}/{DATASETS[0]}/{b}/manifest.json"


def e2e_tables():
    """The end-to-end transfer tables measured so far (e2e_transfer needs root; it runs first)."""
    return sorted(glob.glob("results/transfer/e2e/*/veth*.csv"))


def measured_link_models():
    """The link measurements present (link_validation needs root; it runs first), summarised into
    the cached table: with none here the committed table stands and nothing reruns."""
    return sorted(glob.glob("results/transfer/link/*/model.csv"))


def link_models():
    """The links of the transfer-model validation: loopback and every configured shaped rate."""
    rates = config["transfer"].get("link_rates_gbps", [1, 10, 25])
    links = ["loopback"] + [f"veth{r:g}" for r in rates]
    return expand("results/transfer/link/{link}/model.csv", link=links)


def model_slice(wildcards):
    """Everything of one model the study makes before its cross-model tables: quality per codec,
    CPU timings, transfer tables and KV statistics (`snakemake results/slices/M.csv`).
    """
    m = wildcards.model
    return (
        expand("results/quality/{model}/{codec}.json", model=m, codec=CODECS)
        + expand("results/timing/cpu/{model}/{codec}.csv", model=m, codec=CODECS)
        + expand(
            "results/transfer/{model}/{kind}.csv", model=m, kind=["sweep", "break_even"]
        )
        + [f"results/kvstats/{m}.csv", f"resources/models/{m}/facts.json"]
    )


def kv_manifests_all():
    """Every extraction manifest of the study: every model, dataset and bin."""
    return [
        f"results/kv/{m}/{d}/{b}/manifest.json"
        for m in MODELS
        for d in DATASETS
        for b in bins_of(m)
    ]


def router_outputs():
    """The router study and its figure: its labels need the GPU timings too."""
    if not gpu_timing_tables():
        return []
    return [
        "results/tables/router.csv",
        "results/tables/router_by_bandwidth.csv",
        "paper/figures/router_regret.pdf",
        "paper/figures/router_regret.png",
    ]


def kv_statistics_all():
    return expand("results/kvstats/{model}.csv", model=MODELS)


def offload_dataset(wildcards):
    """The offload study's long-prompt source: a ``datasets`` entry (config ``offload.dataset``)."""
    name = config["offload"]["dataset"]
    if name not in config["datasets"]:
        raise ValueError(
            f"offload.dataset {name!r} is not one of the datasets: {', '.join(DATASETS)}"
        )
    return dataset_spec(type("W", (), {"dataset": name}))


def offload_traces_all():
    return expand("results/offload/traces/{model}/manifest.json", model=MODELS)


def offload_outputs():
    """The offload summary and figures: in `all` where the GPU replay's committed table and the
    calibration it measured exist (a fresh clone has them; a scratch directory has not).
    """
    off = config["offload"]
    if not (Path(off["gpu_table"]).exists() and Path(off["calibration"]).exists()):
        return []
    return [
        "results/tables/offload.csv",
        "paper/figures/offload_latency.pdf",
        "paper/figures/offload_latency.png",
        "paper/figures/offload_pool.pdf",
        "paper/figures/offload_pool.png",
    ]


def model_facts_all():
    return expand("resources/models/{model}/facts.json", model=MODELS)


def measured_transfer_outputs():
    """The measured-link and end-to-end tables (made as root, outside `all`) and the e2e figure:
    in `all` where this working directory has them (the repository's are committed) or has the
    measurements behind them; a scratch directory (-d) has neither and asks for none."""
    out = []
    if measured_link_models() or Path("results/tables/link_model.csv").exists():
        out.append("results/tables/link_model.csv")
    if e2e_tables() or Path("results/tables/e2e_transfer.csv").exists():
        out += [
            "results/tables/e2e_transfer.csv",
            "paper/figures/e2e_model_vs_measured.pdf",
            "paper/figures/e2e_model_vs_measured.png",
        ]
    return out


def all_outputs():
    return (
        measured_transfer_outputs()
        + [
            "results/tables/quality.csv",
            "results/tables/quality_by_bin.csv",
            "results/tables/gates.csv",
            "results/tables/sensitivity.csv",
            "results/tables/break_even.csv",
            "results/tables/break_even.tex",
            "results/tables/models.csv",
            "results/tables/codecs.csv",
            "results/tables/cosine_spearman.csv",
            "results/tables/attention_retention.csv",
            "paper/figures/codec_errors.pdf",
            "paper/figures/codec_errors.png",
            "paper/figures/speedup_vs_bandwidth.pdf",
            "paper/figures/speedup_vs_bandwidth.png",
            "paper/figures/pareto.pdf",
            "paper/figures/pareto.png",
            "paper/figures/cosine_vs_delta_ce.pdf",
            "paper/figures/cosine_vs_delta_ce.png",
            "paper/figures/sensitivity_heatmap.pdf",
            "paper/figures/sensitivity_heatmap.png",
        ]
        + gpu_outputs()
        + decision_outputs()
        + router_outputs()
        + offload_outputs()
    )


# `snakemake paper` runs only these rules: each reads committed cached tables (results/tables/,
# results/timing/gpu/) or another of them, never the study's bulk data, models or GPUs.
PAPER_RULES = [
    "paper_artifacts",
    "gpu_tables",
    "break_even_shift",
    "break_even_all",
    "figure_codec_errors",
    "figure_speedup",
    "figure_speedup_cpu_gpu",
    "figure_pareto",
    "figure_cosine_vs_ce",
    "figure_sensitivity",
    "figure_gpu_kernels",
    "figure_e2e",
    "paper_decision",
    "paper_table",
    "paper_macros",
    "paper_pdf",
    "figure_router",
    "figure_offload",
]

# What each of the paper's artifacts is made from. A table named here is cached (committed under
# results/tables/) unless DERIVED says which tables `snakemake paper` makes it from; "gpu_timing"
# is the committed results/timing/gpu/*.csv. An artifact whose sources are absent is left out of
# the paper's run and the PDF says "no data" in its place.
DERIVED = {
    "gpu_kernels": ["gpu_timing"],
    "gpu_break_even": ["gpu_timing"],
    "break_even_shift": ["break_even", "models", "gpu_break_even"],
    "break_even_all": ["break_even", "models", "gpu_break_even"],
    "gpu_transfer_sweep": ["break_even", "models", "gpu_break_even"],
    "decision": ["transfer_sweep", "gpu_transfer_sweep", "quality"],
}
FIGURE_SOURCES = {
    "codec_errors": ["codecs"],
    "speedup_vs_bandwidth": ["transfer_sweep", "break_even"],
    "speedup_cpu_gpu": ["transfer_sweep", "gpu_transfer_sweep"],
    "pareto": ["quality"],
    "cosine_vs_delta_ce": ["quality", "cosine_spearman"],
    "sensitivity_heatmap": ["quality"],
    "gpu_kernels": ["gpu_kernels"],
    "break_even_shift": ["break_even_shift"],
    "e2e_model_vs_measured": ["e2e_transfer"],
    "decision_flowchart": ["decision"],
    "router_regret": ["router_by_bandwidth"],
    "offload_latency": ["offload"],
    "offload_pool": ["offload"],
}
LATEX_TABLE_SOURCES = {
    "codecs": ["quality"],
    "break_even": ["break_even_all", "models"],
    "sensitivity": ["sensitivity"],
    "kernels": ["gpu_kernels"],
}
# the tables whose numbers the text quotes (paper_macros): the library's list
MACRO_TABLES = MACRO_TABLE_NAMES


def paper_has(table):
    """Whether `snakemake paper` has ``table``: committed here, or derivable from what is."""
    if table == "gpu_timing":
        return bool(gpu_timing_tables())
    if table in DERIVED:
        return all(paper_has(t) for t in DERIVED[table])
    return Path(f"results/tables/{table}.csv").exists()


def _present(sources):
    return [name for name, needs in sources.items() if all(map(paper_has, needs))]


def paper_figures():
    return expand("paper/figures/{f}.pdf", f=_present(FIGURE_SOURCES))


def paper_latex_tables():
    return expand("paper/generated/tables/{t}.tex", t=_present(LATEX_TABLE_SOURCES))


def latex_table_sources(wildcards):
    needs = LATEX_TABLE_SOURCES[wildcards.table]
    return {t: f"results/tables/{t}.csv" for t in needs}


def paper_macro_tables():
    """name -> table, for the macro tables `snakemake paper` has (a missing one reads "no data")."""
    return {t: f"results/tables/{t}.csv" for t in MACRO_TABLES if paper_has(t)}


def paper_outputs():
    """Every figure and derived table the paper rebuilds from the cached tables, and the PDF."""
    figures = [f[: -len(".pdf")] for f in paper_figures()]
    derived = [t for t in DERIVED if paper_has(t)]
    return (
        expand("{f}.{ext}", f=figures, ext=["pdf", "png"])
        + expand("results/tables/{t}.csv", t=derived)
        + ["paper/kvwire.pdf"]
    )


def paper_sources():
    """The paper's hand-written sources: the text and the bibliography (the repository's)."""
    return {
        "tex": str(REPO / "paper" / "kvwire.tex"),
        "bib": str(REPO / "paper" / "refs.bib"),
    }


def paper_config_args():
    """This run's --configfile, handed to the paper's inner run (none: the default config)."""
    files = workflow.overwrite_configfiles or []
    if not files:
        return ""
    return "--configfile " + " ".join(f"'{Path(f).resolve()}'" for f in files)
