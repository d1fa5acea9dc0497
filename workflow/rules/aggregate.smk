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
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
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
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
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
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../../scripts/models_table.py"


rule figure_speedup:
    input:
        sweep="results/tables/transfer_sweep.csv",
        break_even="results/tables/break_even.csv",
    output:
        pdf="paper/figures/speedup_vs_bandwidth.pdf",
        png=report(
            "paper/figures/speedup_vs_bandwidth.png",
            caption="../report/speedup.rst",
            category="Figures",
        ),
    log:
        "logs/aggregate/figure_speedup.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../../scripts/figure_speedup.py"


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
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../../scripts/codecs_table.py"


rule figure_codec_errors:
    input:
        codecs="results/tables/codecs.csv",
    output:
        pdf="paper/figures/codec_errors.pdf",
        png=report(
            "paper/figures/codec_errors.png",
            caption="../report/codec_errors.rst",
            category="Figures",
        ),
    log:
        "logs/aggregate/figure_codec_errors.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../../scripts/figure_codec_errors.py"


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
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
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
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        seed=config.get("seed", 0),
    script:
        "../../scripts/quality_summary.py"


rule kv_statistics:
    input:
        kv=kv_manifests_of_model,
    output:
        table="results/kvstats/{model}.csv",
    log:
        "logs/kvstats/{model}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        torch_threads=config.get("torch_threads", 2),
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
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../../scripts/sensitivity_table.py"


rule figure_pareto:
    input:
        quality="results/tables/quality.csv",
    output:
        pdf="paper/figures/pareto.pdf",
        png=report(
            "paper/figures/pareto.png",
            caption="../report/pareto.rst",
            category="Figures",
        ),
    log:
        "logs/aggregate/figure_pareto.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../../scripts/figure_pareto.py"


rule figure_cosine_vs_ce:
    input:
        quality="results/tables/quality.csv",
        spearman="results/tables/cosine_spearman.csv",
    output:
        pdf="paper/figures/cosine_vs_delta_ce.pdf",
        png=report(
            "paper/figures/cosine_vs_delta_ce.png",
            caption="../report/cosine_vs_delta_ce.rst",
            category="Figures",
        ),
    log:
        "logs/aggregate/figure_cosine_vs_ce.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../../scripts/figure_cosine_vs_ce.py"


rule figure_sensitivity:
    input:
        quality="results/tables/quality.csv",
    output:
        pdf="paper/figures/sensitivity_heatmap.pdf",
        png=report(
            "paper/figures/sensitivity_heatmap.png",
            caption="../report/sensitivity_heatmap.rst",
            category="Figures",
        ),
    log:
        "logs/aggregate/figure_sensitivity.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        metric="token_agreement",
    script:
        "../../scripts/figure_sensitivity.py"


# One model's slice of the study, and its manifest: `snakemake --cores 8 results/slices/M.csv`
# (add --forceall to rerun the slice; only M's jobs and the shared prompt jobs are planned).
rule model_slice:
    input:
        model_slice,
    output:
        manifest="results/slices/{model}.csv",
    log:
        "logs/slices/{model}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../../scripts/model_slice.py"
