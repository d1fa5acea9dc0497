rule transfer_model:
    input:
        timing=timing_tables_of_model,
    output:
        sweep="results/transfer/{model}/sweep.csv",
        break_even="results/transfer/{model}/break_even.csv",
    log:
        "logs/transfer/{model}.log",
    benchmark:
        "results/benchmarks/transfer/{model}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,
        runtime=10,
    params:
        bandwidths=config["transfer"]["bandwidths_gbps"],
        latency_us=config["transfer"]["latency_us"],
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
    benchmark:
        "results/benchmarks/transfer/link/{link}.tsv"
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


# The link measurements present (link_validation needs root and runs first); `all` asks for the table
# only where some exist (common.smk: measured_transfer_outputs).
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
    benchmark:
        "results/benchmarks/transfer/link_summary.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,
        runtime=5,
    script:
        "../../scripts/link_summary.py"


rule link_validation_all:
    input:
        link_models(),


# Encode -> send -> receive -> decode of the first prompt's cache of a model, per codec, on a veth link
# shaped at {rate} Gbps (root; not in `all`): measured wall time against the model fed the break-even's
# own time_cpu tables (the same cache's rows).
rule e2e_transfer:
    input:
        manifest=first_kv_manifest,
        timing=timing_tables_of_model,
    output:
        table="results/transfer/e2e/{model}/veth{rate}.csv",
    log:
        "logs/transfer/e2e/{model}/veth{rate}.log",
    benchmark:
        "results/benchmarks/transfer/e2e/{model}/veth{rate}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        codecs=config["codecs"],
        transfer=config["transfer"],
        torch_threads=config["torch_threads"],
    script:
        "../../scripts/e2e_transfer.py"


# The end-to-end runs present (e.g. results/transfer/e2e/smollm2-135m/veth10.csv, made as root by
# e2e_transfer) summarised: `snakemake --cores 1 results/tables/e2e_transfer.csv`.
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
    benchmark:
        "results/benchmarks/transfer/e2e_summary.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/e2e_summary.py"
