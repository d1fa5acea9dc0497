rule quality_table:
    input:
        quality=quality_files(),
    output:
        table=report(
            "results/tables/quality.csv",
            caption="../report/quality.rst",
            category="Tables",
        ),
        cost="results/tables/quality_cost.csv",
    log:
        "logs/aggregate/quality_table.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../../scripts/quality_table.py"


rule break_even_table:
    input:
        tables=transfer_tables(),
    output:
        csv="results/tables/break_even.csv",
        tex="results/tables/break_even.tex",
        sweep="results/tables/transfer_sweep.csv",
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
        table="results/tables/models.csv",
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


rule quality_summary:
    input:
        quality=quality_files(),
    output:
        by_model=report(
            "results/tables/quality_by_model.csv",
            caption="../report/quality_by_model.rst",
            category="Tables",
        ),
        spearman=report(
            "results/tables/cosine_spearman.csv",
            caption="../report/cosine_spearman.rst",
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
