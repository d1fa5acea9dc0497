# Config validation, wildcard constraints and every input function of the workflow.
import glob
import json
import os
import re
import sys
from pathlib import Path

# Jobs inherit this (see lib/kvwire/__init__.py for why it matters to CPU timings).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from snakemake.utils import validate

# The workflow uses the repository's own library, installed or not.
sys.path.insert(0, str(Path(workflow.basedir) / "lib"))
from kvwire.config import (
    check_config,
    codec_spec,
    load_schema,
    narrow_codecs,
    narrow_models,
    study_pairs,
)  # noqa: E402
from kvwire.figures import FIGURES  # noqa: E402  (the figure registry)
from kvwire.paper.latex_tables import LATEX_TABLES  # noqa: E402
from kvwire.paper.macros import TABLES as MACRO_TABLE_NAMES  # noqa: E402
from kvwire.resources import (  # noqa: E402
    available_mem_mb,
    card_shape,
    facts_mem_mb,
    gpu_visible,
    job_mem_mb,
    source_shape,
)

SCHEMA = str(Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")
check_config(config, load_schema(SCHEMA))  # one clear line per bad key
validate(config, schema=SCHEMA)  # fills defaults
# only_codecs / only_models: a layered config narrows the codec / model set
CODECS_LEFT_OUT = narrow_codecs(config)
MODELS_LEFT_OUT = narrow_models(config)

# A local run (--cores) starts no more jobs than this machine's memory holds: their declared mem_mb
# add up to at most what is available now, unless --resources or a profile sets mem_mb. Cluster runs
# (--jobs with an executor) leave memory to the scheduler, which gets each job's mem_mb.
MACHINE_MEM_MB = available_mem_mb()
if (
    "mem_mb" not in workflow.global_resources
    and workflow.resource_settings.nodes is None
):
    workflow.register_resource("mem_mb", MACHINE_MEM_MB)

# Said once per local run, not once per GPU-tagged job (each job's log still records it).
ON_GPU_IF_ANY = [
    step
    for step, device in (
        ("extract_kv", config["extract"]["device"]),
        ("reference/quality", config["quality"]["device"]),
    )
    if device == "auto"
]
if (
    ON_GPU_IF_ANY
    and workflow.is_main_process
    and workflow.resource_settings.nodes is None
    and not gpu_visible()
):
    print(
        f"kvwire: no GPU visible: {', '.join(ON_GPU_IF_ANY)} run on the CPU",
        file=sys.stderr,
    )

# Memory of the jobs that load no model and no cache (tables, figures): see docs/OPERATIONS.md.
TABLE_MEM_MB = 1000
FIGURE_MEM_MB = 1000

MODELS = list(config["models"])
DATASETS = list(config["datasets"])
BINS = [int(b) for b in config["prompts"]["bins"]]
ALL_BINS = sorted(
    {int(b) for m in config["models"].values() for b in m.get("bins", BINS)}
)
CODECS = list(config["codecs"])
# the configured codec pairs (quality_pairs.csv) whose two codecs this study runs
STUDY_PAIRS, PAIRS_LEFT_OUT = study_pairs(config)


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
    root="results|paper",


# ---------------------------------------------------------------- memory (docs/OPERATIONS.md#memory)
# Every job that loads a model or a cache declares the peak kvwire.resources fits to the study's
# measured peaks, from the model's shape (facts.json, or its official card before it exists) and
# the tokens it handles. Snakemake evaluates them once the inputs exist.


def sized_mem_mb(step, model, facts, **work):
    """mem_mb of a job of ``model``: from its facts.json once it exists (Snakemake re-evaluates a
    job's resources before it starts it), until then from its official card or, for a local model,
    its config.json (what a dry run shows, and what fetch_model asks for); a model with none of
    them (a hub id without an official card) claims the machine, so that it runs alone.
    """
    if facts and Path(facts).exists():
        return facts_mem_mb(step, facts, **work)
    spec = config["models"][model]
    shape = card_shape(spec.get("official", "")) or source_shape(
        _from_repo(spec["source"])
    )
    return job_mem_mb(step, shape, **work) if shape else MACHINE_MEM_MB


def mem_fetch_model(wildcards):
    return sized_mem_mb("fetch_model", wildcards.model, None)


def mem_extract(wildcards, input):
    ex = config["extract"]
    return sized_mem_mb(
        "extract_kv",
        wildcards.model,
        input.facts,
        tokens=int(wildcards.bin),
        batch=ex["batch_size"],
        attention=ex["attention_stats"],
    )


def mem_scoring(step):
    """reference and quality: every bin of the model, scored in quality.batch_size batches."""

    def mem(wildcards, input):
        return sized_mem_mb(
            step,
            wildcards.model,
            input.facts,
            tokens=max(bins_of(wildcards.model)),
            batch=config["quality"]["batch_size"],
            continuation=config["prompts"]["continuation"],
        )

    return mem


def mem_cache(step):
    """encode, time_cpu, kv_statistics: one prompt's cache of the model's largest bin at a time."""

    def mem(wildcards, input):
        return sized_mem_mb(
            step, wildcards.model, input.facts, tokens=max(bins_of(wildcards.model))
        )

    return mem


def mem_router(wildcards, input):
    """The router reads every model's caches, one at a time: the largest model's bin sizes it."""
    return max(
        sized_mem_mb(
            "router",
            m,
            f"resources/models/{m}/facts.json",
            tokens=max(bins_of(m)),
        )
        for m in MODELS
    )


def mem_offload_trace(wildcards, input):
    return sized_mem_mb(
        "offload_trace",
        wildcards.model,
        input.facts,
        tokens=max(config["offload"]["contexts"]),
    )


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
    """The model's config entry, its local path made absolute for the job; facts.json records the
    source as configured, so that no checkout's location reaches the KV files or the wire bytes.
    """
    spec = dict(config["models"][wildcards.model])
    spec["configured_source"] = spec["source"]
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


def wire_containers(wildcards):
    return f"results/wire/{wildcards.model}/{wildcards.codec}"


def wire_output():
    """One codec's containers of one model (a folder: manifest.json + one .kvw per prompt). Only the
    quality job reads them: unless ``storage.keep_wire``, Snakemake deletes them once it has.
    """
    out = directory("results/wire/{model}/{codec}")
    return out if config["storage"]["keep_wire"] else temp(out)


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
    return {k: v for k, v in config["timing"].items() if not k.startswith("gpu_")}


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


def cpu_scaling_tables():
    """The CPU scaling tables measured at 1-16 threads on whole hosts by bench/cpu_scaling.py and
    committed (no job of the workflow makes one), results/timing/cpu_scaling/<host>.csv of the
    working directory, else the repository's cached ones."""
    here = sorted(glob.glob("results/timing/cpu_scaling/*.csv"))
    if here:
        return here
    return sorted(
        glob.glob(
            str(Path(workflow.basedir) / "results" / "timing" / "cpu_scaling" / "*.csv")
        )
    )


def server_cpu_table(wildcards):
    """The CPU scaling table (the whole-server CPU side of the CPU-vs-GPU break-even), where cached
    scaling timings exist; else nothing, and the shift table compares with the study's CPU alone.
    """
    return ["results/tables/cpu_scaling.csv"] if cpu_scaling_tables() else []


def gpu_real_tables():
    """The GPU timing tables of real caches (bench/gpu_codecs.py --time-kv, with synthetic caches of the
    same shapes), committed under results/timing/gpu_real/: the working directory's, else the
    repository's."""
    here = sorted(glob.glob("results/timing/gpu_real/*.csv"))
    if here:
        return here
    return sorted(
        glob.glob(
            str(Path(workflow.basedir) / "results" / "timing" / "gpu_real" / "*.csv")
        )
    )


def cpu_scaling_outputs():
    """The CPU scaling table and the real-against-synthetic GPU table, where their cached tables exist."""
    return (["results/tables/cpu_scaling.csv"] if cpu_scaling_tables() else []) + (
        ["results/tables/gpu_real_caches.csv"] if gpu_real_tables() else []
    )


def figures_from(tables):
    """The registered figures (kvwire.figures) whose every source is among ``tables`` (names)."""
    return [name for name, f in FIGURES.items() if set(f.sources) <= set(tables)]


def figure_inputs(wildcards):
    """Rule figure: ``{root}/tables/<source>.csv`` of each of the figure's sources, named by source."""
    return {
        s: f"{wildcards.root}/tables/{s}.csv" for s in FIGURES[wildcards.figure].sources
    }


def figure_caption(wildcards):
    """Rule figure: the figure's report caption (workflow/report/figure.rst renders it)."""
    return FIGURES[wildcards.figure].caption


def study_figures(outputs):
    """``results/figures/<name>.{pdf,png}`` of every registered figure whose source tables are all
    among ``outputs`` (the study's own figures; the paper's are in paper/figures)."""
    tables = [
        Path(p).stem
        for p in outputs
        if p.startswith("results/tables/") and p.endswith(".csv")
    ]
    return expand(
        "results/figures/{f}.{ext}", f=figures_from(tables), ext=["pdf", "png"]
    )


def gpu_outputs():
    """The GPU summaries, where any GPU timing table exists."""
    if not gpu_timing_tables():
        return []
    return [
        "results/tables/gpu_kernels.csv",
        "results/tables/gpu_break_even.csv",
        "results/tables/break_even_shift.csv",
        "results/tables/break_even_all.csv",
        "results/tables/gpu_transfer_sweep.csv",
    ]


def decision_outputs():
    """The decision table (its figure is the flowchart): it needs the GPU speed-up sweep, so GPU timings."""
    if not gpu_timing_tables():
        return []
    return ["results/tables/decision.csv"]


def first_kv_manifest(wildcards):
    """The largest bin's extraction of the first dataset: its first prompt is the end-to-end payload."""
    b = max(bins_of(wildcards.model))
    return f"results/kv/{wildcards.model}/{DATASETS[0]}/{b}/manifest.json"


def e2e_tables():
    """The end-to-end transfer tables measured so far (e2e_transfer needs root; it runs first)."""
    return sorted(glob.glob("results/transfer/e2e/*/veth*.csv"))


def measured_link_models():
    """The link measurements present (link_validation needs root; it runs first): `all` summarises
    them where there are any (the published table is paper/tables/link_model.csv)."""
    return sorted(glob.glob("results/transfer/link/*/model.csv"))


def link_models():
    """The links of the transfer-model validation: loopback and every configured shaped rate."""
    rates = config["transfer"]["link_rates_gbps"]
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
    """The router study's tables: its labels need the GPU timings too."""
    if not gpu_timing_tables():
        return []
    return [
        "results/tables/router.csv",
        "results/tables/router_by_bandwidth.csv",
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


def _offload_calibrated():
    """The config's models whose GPU costs the committed calibration holds (None: no GPU replay)."""
    off = config["offload"]
    if not (Path(off["gpu_table"]).exists() and Path(off["calibration"]).exists()):
        return None
    with open(off["calibration"]) as fh:
        measured = json.load(fh).get("models", {})

    def covered(model):
        # a context beyond the model's own is traced at the longest it holds (SmolLM2: 8160)
        have = [int(c) for c in measured.get(model, {}).get("contexts", {})]
        return bool(have) and all(c in have or c > max(have) for c in off["contexts"])

    return [m for m in MODELS if covered(m)]


def offload_uncalibrated():
    """Why the offload study cannot be simulated for this config (None if it can): the simulation
    runs on the costs a GPU replay measured for the same models (offload.calibration).
    """
    off = config["offload"]
    calibrated = _offload_calibrated()
    if calibrated is None:
        return f"no GPU replay at {off['gpu_table']} / {off['calibration']}"
    if not calibrated:
        return (
            f"{off['calibration']} has no GPU costs for {', '.join(MODELS)} "
            f"at contexts {off['contexts']}"
        )
    return None


def offload_models():
    """The models the offload study simulates: those the GPU replay calibrated (a model added
    later, such as a Qwen model, waits for rule offload_gpu on a GPU; said once per run).
    """
    return _offload_calibrated() or []


def offload_simulated_traces():
    return expand(
        "results/offload/traces/{model}/manifest.json", model=offload_models()
    )


def offload_outputs():
    """The offload summary: in `all` where the GPU replay's committed results and the
    calibration it measured for this config's models exist (a fresh clone of the default study has
    them; the smoke study's tiny model and a scratch directory have not: rule offload_gpu makes them).
    """
    if offload_uncalibrated():
        return []
    return ["results/tables/offload.csv"]


def model_facts_all():
    return expand("resources/models/{model}/facts.json", model=MODELS)


def measured_transfer_outputs():
    """The measured-link and end-to-end tables: in `all` where this working
    directory has the measurements behind them (made as root, outside `all`: docs/TRANSFER.md).
    """
    out = []
    if measured_link_models():
        out.append("results/tables/link_model.csv")
    if e2e_tables():
        out.append("results/tables/e2e_transfer.csv")
    return out


def usage_benchmarks():
    """The benchmark files of every job of `all` that loads a model or a cache (rule resource_usage)."""
    files = (
        expand("results/benchmarks/models/{model}.tsv", model=MODELS)
        + expand("results/benchmarks/prompts/{dataset}.tsv", dataset=DATASETS)
        + [
            f"results/benchmarks/extract/{m}/{d}/{n}.tsv"
            for m in MODELS
            for d in DATASETS
            for n in bins_of(m)
        ]
        + expand(
            "results/benchmarks/{step}/{model}.tsv",
            step=["reference", "kvstats", "transfer"],
            model=MODELS,
        )
        + expand(
            "results/benchmarks/{step}/{model}/{codec}.tsv",
            step=["encode", "quality", "timing/cpu"],
            model=MODELS,
            codec=CODECS,
        )
    )
    if offload_outputs():
        files += expand(
            "results/benchmarks/offload/trace_{model}.tsv", model=offload_models()
        )
        files.append("results/benchmarks/offload/simulate.tsv")
    if router_outputs():
        files.append("results/benchmarks/router/router.tsv")
    return files


def pairs_outputs():
    """The codec-pair table, where the study runs both codecs of a configured pair."""
    if not STUDY_PAIRS:
        return []
    return ["results/tables/quality_pairs.csv"]


def all_outputs():
    """The study's tables, and every registered figure whose source tables are all among them."""
    tables = all_tables()
    return tables + study_figures(tables)


def all_tables():
    return (
        ["results/tables/resources.csv"]
        + measured_transfer_outputs()
        + [
            "results/tables/quality.csv",
            "results/tables/quality_by_bin.csv",
            "results/tables/gates.csv",
            "results/tables/sensitivity.csv",
            "results/tables/transfer_sweep.csv",
            "results/tables/break_even.csv",
            "results/tables/break_even.tex",
            "results/tables/models.csv",
            "results/tables/codecs.csv",
            "results/tables/cosine_spearman.csv",
            "results/tables/attention_retention.csv",
        ]
        + pairs_outputs()
        + gpu_outputs()
        + cpu_scaling_outputs()
        + decision_outputs()
        + router_outputs()
        + offload_outputs()
    )


# ---------------------------------------------------------------- the paper (rules/paper.smk)
# The paper reads the published tables in paper/tables (committed, written by `kvwire publish`,
# never by a rule), so none of its jobs can pull in the study.
PAPER_TABLES = "paper/tables"
# What each LaTeX table is drawn from (rules/paper.smk; the library's registry, as each figure's
# sources are kvwire.figures'): an artefact whose tables are not published is left out and the PDF says
# "no data" in its place.
LATEX_TABLE_SOURCES = {n: list(t.sources) for n, t in LATEX_TABLES.items()}
# the tables whose numbers the text quotes (paper_macros): the library's list
MACRO_TABLES = MACRO_TABLE_NAMES
TEX_MISSING_MESSAGE = (
    "TeX Live is not installed (latexmk, pdflatex, bibtex); install it with: "
    "sudo apt-get install -y --no-install-recommends latexmk texlive-latex-recommended "
    "texlive-latex-extra texlive-fonts-recommended poppler-utils"
)


def paper_table(table):
    return f"{PAPER_TABLES}/{table}.csv"


def paper_has(table):
    """Whether ``table`` is published in paper/tables."""
    return Path(paper_table(table)).exists()


def _present(sources):
    return [name for name, needs in sources.items() if all(map(paper_has, needs))]


def paper_figures():
    """Every registered figure whose source tables are all published in paper/tables."""
    published = [
        t for t in {s for f in FIGURES.values() for s in f.sources} if paper_has(t)
    ]
    return expand("paper/figures/{f}.pdf", f=figures_from(published))


def paper_latex_tables():
    return expand("paper/generated/tables/{t}.tex", t=_present(LATEX_TABLE_SOURCES))


def latex_table_sources(wildcards):
    return {t: paper_table(t) for t in LATEX_TABLE_SOURCES[wildcards.table]}


def paper_macro_tables():
    """name -> table, for the macro tables published (a missing one reads "no data"), and the
    manifest of the published set where there is one (the provenance macros)."""
    tables = {t: paper_table(t) for t in MACRO_TABLES if paper_has(t)}
    manifest = Path(PAPER_TABLES) / "PUBLISHED.json"
    return {**tables, "manifest": str(manifest)} if manifest.exists() else tables


def paper_outputs():
    """Every paper figure whose tables are published, and the PDF."""
    figures = [f[: -len(".pdf")] for f in paper_figures()]
    return expand("{f}.{ext}", f=figures, ext=["pdf", "png"]) + ["paper/kvwire.pdf"]


def paper_sources():
    """The paper's hand-written sources: the text and the bibliography (the repository's)."""
    return {
        "tex": str(REPO / "paper" / "kvwire.tex"),
        "bib": str(REPO / "paper" / "refs.bib"),
    }


# Said once per local run: what `all` leaves out, and why.
if workflow.is_main_process and workflow.resource_settings.nodes is None:
    if CODECS_LEFT_OUT:
        print(
            f"kvwire: only_codecs runs {CODECS}, not {CODECS_LEFT_OUT}",
            file=sys.stderr,
        )
    if PAIRS_LEFT_OUT:
        print(
            f"kvwire: quality_pairs leaves out {PAIRS_LEFT_OUT} (codecs not in this study)",
            file=sys.stderr,
        )
    _why = offload_uncalibrated() if "offload" in config else None
    if _why:
        print(
            f"kvwire: the offload study is not part of `all` ({_why}; rule offload_gpu on a GPU)",
            file=sys.stderr,
        )
    elif "offload" in config and len(offload_models()) < len(MODELS):
        print(
            f"kvwire: the offload study leaves out "
            f"{', '.join(m for m in MODELS if m not in offload_models())} "
            f"({config['offload']['calibration']} has no GPU costs for them at contexts "
            f"{config['offload']['contexts']}; rule offload_gpu on a GPU)",
            file=sys.stderr,
        )
