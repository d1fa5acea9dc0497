rule transfer_model:
    input:
        timing=timing_tables_of_model,
    output:
        sweep="results/transfer/{model}/sweep.csv",
        break_even="results/transfer/{model}/break_even.csv",
    log:
        "logs/transfer/{model}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        bandwidths=config["transfer"]["bandwidths_gbps"],
        latency_us=config["transfer"].get("latency_us", 0),
    script:
        "../../scripts/transfer_model.py"


# Measured links (issue 6): loopback, and veth pairs between two namespaces shaped with tc (root);
# not in `all` (they need root and a quiet machine): `snakemake --cores 1 link_validation_all`, then
# `snakemake --cores 1 link_summary` (its inputs are the measurements present when the DAG is built).
rule link_validation:
    output:
        transfers="results/transfer/link/{link}/transfers.csv",
        model="results/transfer/link/{link}/model.csv",
    log:
        "logs/transfer/link/{link}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: workflow.cores
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        transfer=config["transfer"],
    script:
        "../../scripts/link_validation.py"


# Made from the link measurements present; where there are none, the committed table is a source.
if measured_link_models():

    rule link_summary:
        input:
            models=measured_link_models(),
        output:
            table=report(
                "results/tables/link_model.csv",
                caption="../report/link_model.rst",
                category="Tables",
            ),
        log:
            "logs/transfer/link_summary.log",
        conda:
            "../../envs/analysis.yaml"
        threads: 1
        resources:
            mem_mb=1000,
            runtime=5,
        script:
            "../../scripts/link_summary.py"

else:

    # the committed table: a source here (a job only if it is missing, to say how to make it)
    rule link_summary:
        output:
            table=report(
                "results/tables/link_model.csv",
                caption="../report/link_model.rst",
                category="Tables",
            ),
        log:
            "logs/transfer/link_summary.log",
        conda:
            "../../envs/analysis.yaml"
        shell:
            "echo 'results/tables/link_model.csv is a cached table made from measurements this directory lacks: as root, snakemake --cores 1 link_validation_all, then link_summary' | tee {log} >&2; exit 1"


rule link_validation_all:
    input:
        link_models(),


# Encode -> send -> receive -> decode of the first prompt's cache of a model, per codec, on a veth link
# shaped at {rate} Gbps (root; not in `all`): measured wall time against the pipelined model.
rule e2e_transfer:
    input:
        manifest=first_kv_manifest,
    output:
        table="results/transfer/e2e/{model}/veth{rate}.csv",
    log:
        "logs/transfer/e2e/{model}/veth{rate}.log",
    conda:
        "../../envs/torch.yaml"
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        codecs=config["codecs"],
        transfer=config["transfer"],
    script:
        "../../scripts/e2e_transfer.py"


# The end-to-end runs present (e.g. results/transfer/e2e/smollm2-135m/veth10.csv) summarised into a
# cached table the paper reads; run after e2e_transfer: `snakemake --cores 1 e2e_summary`.
# Made from the end-to-end runs present; where there are none, the committed table is a source.
if e2e_tables():

    rule e2e_summary:
        input:
            tables=e2e_tables(),
        output:
            table=report(
                "results/tables/e2e_transfer.csv",
                caption="../report/e2e_transfer.rst",
                category="Tables",
            ),
        log:
            "logs/transfer/e2e_summary.log",
        conda:
            "../../envs/analysis.yaml"
        threads: 1
        resources:
            mem_mb=1000,
            runtime=10,
        script:
            "../../scripts/e2e_summary.py"

else:

    # the committed table: a source here (a job only if it is missing, to say how to make it)
    rule e2e_summary:
        output:
            table=report(
                "results/tables/e2e_transfer.csv",
                caption="../report/e2e_transfer.rst",
                category="Tables",
            ),
        log:
            "logs/transfer/e2e_summary.log",
        conda:
            "../../envs/analysis.yaml"
        shell:
            "echo 'results/tables/e2e_transfer.csv is a cached table made from measurements this directory lacks: as root, snakemake --cores 2 results/transfer/e2e/MODEL/vethRATE.csv, then e2e_summary' | tee {log} >&2; exit 1"


rule figure_e2e:
    input:
        table="results/tables/e2e_transfer.csv",
    output:
        pdf="paper/figures/e2e_model_vs_measured.pdf",
        png=report(
            "paper/figures/e2e_model_vs_measured.png",
            caption="../report/e2e_model_vs_measured.rst",
            category="Figures",
        ),
    log:
        "logs/transfer/figure_e2e.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../../scripts/figure_e2e.py"
