# The figures of a result set. {root} is "results" (this checkout's study: results/tables ->
# results/figures, part of `all`) or "paper" (the published tables the paper is built from, committed:
# paper/tables -> paper/figures). No rule writes paper/tables, so asking for a paper figure, or the PDF,
# never plans the study behind its tables. common.smk: FIGURE_SOURCES says which tables each needs.


rule figure_speedup:
    input:
        sweep="{root}/tables/transfer_sweep.csv",
        break_even="{root}/tables/break_even.csv",
    output:
        pdf="{root}/figures/speedup_vs_bandwidth.pdf",
        png=report(
            "{root}/figures/speedup_vs_bandwidth.png",
            caption="../report/speedup.rst",
            category="Figures",
        ),
    log:
        "logs/{root}/figures/speedup.log",
    benchmark:
        "results/benchmarks/{root}/figures/speedup.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=FIGURE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/figure_speedup.py"


rule figure_codec_errors:
    input:
        codecs="{root}/tables/codecs.csv",
    output:
        pdf="{root}/figures/codec_errors.pdf",
        png=report(
            "{root}/figures/codec_errors.png",
            caption="../report/codec_errors.rst",
            category="Figures",
        ),
    log:
        "logs/{root}/figures/codec_errors.log",
    benchmark:
        "results/benchmarks/{root}/figures/codec_errors.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=FIGURE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/figure_codec_errors.py"


rule figure_pareto:
    input:
        quality="{root}/tables/quality.csv",
    output:
        pdf="{root}/figures/pareto.pdf",
        png=report(
            "{root}/figures/pareto.png",
            caption="../report/pareto.rst",
            category="Figures",
        ),
    log:
        "logs/{root}/figures/pareto.log",
    benchmark:
        "results/benchmarks/{root}/figures/pareto.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=FIGURE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/figure_pareto.py"


rule figure_cosine_vs_ce:
    input:
        quality="{root}/tables/quality.csv",
        spearman="{root}/tables/cosine_spearman.csv",
    output:
        pdf="{root}/figures/cosine_vs_delta_ce.pdf",
        png=report(
            "{root}/figures/cosine_vs_delta_ce.png",
            caption="../report/cosine_vs_delta_ce.rst",
            category="Figures",
        ),
    log:
        "logs/{root}/figures/cosine_vs_ce.log",
    benchmark:
        "results/benchmarks/{root}/figures/cosine_vs_ce.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=FIGURE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/figure_cosine_vs_ce.py"


rule figure_sensitivity:
    input:
        quality="{root}/tables/quality.csv",
    output:
        pdf="{root}/figures/sensitivity_heatmap.pdf",
        png=report(
            "{root}/figures/sensitivity_heatmap.png",
            caption="../report/sensitivity_heatmap.rst",
            category="Figures",
        ),
    log:
        "logs/{root}/figures/sensitivity.log",
    benchmark:
        "results/benchmarks/{root}/figures/sensitivity.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=FIGURE_MEM_MB,
        runtime=10,
    params:
        metric="token_agreement",
    script:
        "../../scripts/figure_sensitivity.py"


rule figure_gpu_kernels:
    input:
        summary="{root}/tables/gpu_kernels.csv",
    output:
        pdf="{root}/figures/gpu_kernels.pdf",
        png=report(
            "{root}/figures/gpu_kernels.png",
            caption="../report/gpu_kernels_figure.rst",
            category="Figures",
        ),
    log:
        "logs/{root}/figures/gpu_kernels.log",
    benchmark:
        "results/benchmarks/{root}/figures/gpu_kernels.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=FIGURE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/figure_gpu_kernels.py"


rule figure_break_even_shift:
    input:
        table="{root}/tables/break_even_shift.csv",
    output:
        pdf="{root}/figures/break_even_shift.pdf",
        png=report(
            "{root}/figures/break_even_shift.png",
            caption="../report/break_even_shift_figure.rst",
            category="Figures",
        ),
    log:
        "logs/{root}/figures/break_even_shift.log",
    benchmark:
        "results/benchmarks/{root}/figures/break_even_shift.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=FIGURE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/figure_break_even_shift.py"


rule figure_speedup_cpu_gpu:
    input:
        cpu="{root}/tables/transfer_sweep.csv",
        gpu="{root}/tables/gpu_transfer_sweep.csv",
    output:
        pdf="{root}/figures/speedup_cpu_gpu.pdf",
        png=report(
            "{root}/figures/speedup_cpu_gpu.png",
            caption="../report/speedup_cpu_gpu.rst",
            category="Figures",
        ),
    log:
        "logs/{root}/figures/speedup_cpu_gpu.log",
    benchmark:
        "results/benchmarks/{root}/figures/speedup_cpu_gpu.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=FIGURE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/figure_speedup_cpu_gpu.py"


rule figure_e2e:
    input:
        table="{root}/tables/e2e_transfer.csv",
    output:
        pdf="{root}/figures/e2e_model_vs_measured.pdf",
        png=report(
            "{root}/figures/e2e_model_vs_measured.png",
            caption="../report/e2e_model_vs_measured.rst",
            category="Figures",
        ),
    log:
        "logs/{root}/figures/e2e.log",
    benchmark:
        "results/benchmarks/{root}/figures/e2e.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=FIGURE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/figure_e2e.py"


rule figure_decision:
    input:
        table="{root}/tables/decision.csv",
    output:
        pdf="{root}/figures/decision_flowchart.pdf",
        png=report(
            "{root}/figures/decision_flowchart.png",
            caption="../report/decision_flowchart.rst",
            category="Figures",
        ),
    log:
        "logs/{root}/figures/decision.log",
    benchmark:
        "results/benchmarks/{root}/figures/decision.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=FIGURE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/figure_decision.py"


rule figure_router:
    input:
        by_bandwidth="{root}/tables/router_by_bandwidth.csv",
    output:
        pdf="{root}/figures/router_regret.pdf",
        png=report(
            "{root}/figures/router_regret.png",
            caption="../report/router_regret.rst",
            category="Figures",
        ),
    log:
        "logs/{root}/figures/router.log",
    benchmark:
        "results/benchmarks/{root}/figures/router.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=FIGURE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/figure_router.py"


rule figure_offload:
    input:
        table="{root}/tables/offload.csv",
    output:
        latency_pdf="{root}/figures/offload_latency.pdf",
        latency_png=report(
            "{root}/figures/offload_latency.png",
            caption="../report/offload_latency.rst",
            category="Figures",
        ),
        pool_pdf="{root}/figures/offload_pool.pdf",
        pool_png=report(
            "{root}/figures/offload_pool.png",
            caption="../report/offload_pool.rst",
            category="Figures",
        ),
    log:
        "logs/{root}/figures/offload.log",
    benchmark:
        "results/benchmarks/{root}/figures/offload.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=FIGURE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/figure_offload.py"


rule figure_quality_pairs:
    input:
        pairs="{root}/tables/quality_pairs.csv",
    output:
        pdf="{root}/figures/quality_pairs.pdf",
        png=report(
            "{root}/figures/quality_pairs.png",
            caption="../report/quality_pairs_figure.rst",
            category="Figures",
        ),
    log:
        "logs/{root}/figures/quality_pairs.log",
    benchmark:
        "results/benchmarks/{root}/figures/quality_pairs.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=FIGURE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/figure_quality_pairs.py"
