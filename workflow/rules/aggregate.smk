rule quality_by_bin:
    input:
        quality=quality_files(),
    output:
        table=report(
            "results/tables/quality_by_bin.csv",
            caption="../report/quality_by_bin.rst",
            category="Tables",
        ),
        cost=report(
            "results/tables/quality_cost.csv",
            caption="../report/quality_cost.rst",
            category="Tables",
        ),
    log:
        "logs/aggregate/quality_by_bin.log",
    benchmark:
        "results/benchmarks/aggregate/quality_by_bin.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/quality_by_bin.py"


rule break_even_table:
    input:
        tables=transfer_tables(),
    output:
        csv=report(
            "results/tables/break_even.csv",
            caption="../report/break_even.rst",
            category="Tables",
        ),
        tex="results/tables/break_even.tex",
        sweep=report(
            "results/tables/transfer_sweep.csv",
            caption="../report/transfer_sweep.rst",
            category="Tables",
        ),
    log:
        "logs/aggregate/break_even_table.log",
    benchmark:
        "results/benchmarks/aggregate/break_even_table.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/break_even_table.py"


rule models_table:
    input:
        facts=model_facts_all(),
    output:
        table=report(
            "results/tables/models.csv",
            caption="../report/models.rst",
            category="Tables",
        ),
    log:
        "logs/aggregate/models_table.log",
    benchmark:
        "results/benchmarks/aggregate/models_table.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/models_table.py"


rule codecs_table:
    input:
        quality=quality_files(),
    output:
        table=report(
            "results/tables/codecs.csv",
            caption="../report/codecs.rst",
            category="Tables",
        ),
    log:
        "logs/aggregate/codecs_table.log",
    benchmark:
        "results/benchmarks/aggregate/codecs_table.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/codecs_table.py"


# A failed gate stops the study before its main tables exist (see lib/kvwire/gates.py).
rule sanity_gates:
    input:
        quality=quality_files(),
    output:
        table=report(
            "results/tables/gates.csv",
            caption="../report/gates.rst",
            category="Tables",
        ),
    log:
        "logs/aggregate/sanity_gates.log",
    benchmark:
        "results/benchmarks/aggregate/sanity_gates.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,
        runtime=10,
    params:
        floors=config["gates"],
        waivers=config["gate_waivers"],
    script:
        "../../scripts/sanity_gates.py"


rule quality_summary:
    input:
        gates="results/tables/gates.csv",
        quality=quality_files(),
    output:
        by_model=report(
            "results/tables/quality.csv",
            caption="../report/quality.rst",
            category="Tables",
        ),
        spearman=report(
            "results/tables/cosine_spearman.csv",
            caption="../report/cosine_spearman.rst",
            category="Tables",
        ),
        retention=report(
            "results/tables/attention_retention.csv",
            caption="../report/attention_retention.rst",
            category="Tables",
        ),
    log:
        "logs/aggregate/quality_summary.log",
    benchmark:
        "results/benchmarks/aggregate/quality_summary.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,
        runtime=10,
    params:
        seed=config["seed"],
    script:
        "../../scripts/quality_summary.py"


rule quality_pairs:
    input:
        quality=quality_files(),
    output:
        table=report(
            "results/tables/quality_pairs.csv",
            caption="../report/quality_pairs.rst",
            category="Tables",
        ),
    log:
        "logs/aggregate/quality_pairs.log",
    benchmark:
        "results/benchmarks/aggregate/quality_pairs.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,
        runtime=10,
    params:
        pairs=STUDY_PAIRS,
        seed=config["seed"],
    script:
        "../../scripts/quality_pairs.py"


rule kv_statistics:
    input:
        facts=model_facts,
        kv=kv_manifests_of_model,
    output:
        table="results/kvstats/{model}.csv",
    log:
        "logs/kvstats/{model}.log",
    benchmark:
        "results/benchmarks/kvstats/{model}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=mem_cache("kv_statistics"),
        runtime=20,
    params:
        torch_threads=config["torch_threads"],
    script:
        "../../scripts/kv_statistics.py"


rule sensitivity_table:
    input:
        kvstats=kv_statistics_all(),
        models="results/tables/models.csv",
        quality="results/tables/quality.csv",
    output:
        table=report(
            "results/tables/sensitivity.csv",
            caption="../report/sensitivity.rst",
            category="Tables",
        ),
    log:
        "logs/aggregate/sensitivity_table.log",
    benchmark:
        "results/benchmarks/aggregate/sensitivity_table.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/sensitivity_table.py"


# One model's slice of the study, and its manifest: `snakemake --cores 8 results/slices/M.csv`
# (add --forceall to rerun the slice; only M's jobs and the shared prompt jobs are planned).
rule model_slice:
    input:
        model_slice,
    output:
        manifest="results/slices/{model}.csv",
    log:
        "logs/slices/{model}.log",
    benchmark:
        "results/benchmarks/slices/{model}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/model_slice.py"


# What every model- and cache-loading job of the run used: time, CPU, the exact peak RSS its log
# records and Snakemake's sampled one from its benchmark file, against the mem_mb it declared.
rule resource_usage:
    input:
        benchmarks=usage_benchmarks(),
    output:
        table=report(
            "results/tables/resources.csv",
            caption="../report/resources.rst",
            category="Tables",
        ),
    log:
        "logs/aggregate/resource_usage.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/resource_usage.py"
