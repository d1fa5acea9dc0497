# CPU timing takes every core so that no neighbouring job disturbs the clock.
rule time_cpu:
    input:
        facts=model_facts,
        kv=kv_manifests_for_timing,
    output:
        table="results/timing/cpu/{model}/{codec}.csv",
    log:
        "logs/timing/cpu/{model}/{codec}.log",
    benchmark:
        "results/benchmarks/timing/cpu/{model}/{codec}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: workflow.cores
    resources:
        mem_mb=mem_cache("time_cpu"),
        runtime=30,
    params:
        codec=codec_of,
        timing=cpu_timing_options(),
        torch_threads=config["torch_threads"],
    script:
        "../../scripts/time_cpu.py"


# GPU-tagged and never run by `all`: one run's table, measured on a GPU node (`--profile slurm` asks
# for one); {gpu} must name the device (h200 -> "NVIDIA H200"), or the job stops. Runs are merged into
# the committed results/timing/gpu/{gpu}.csv by bench/merge_gpu_tables.py (each keeps its run label),
# which no rule writes: a fresh clone's cached table is a source, never a job to rerun.
rule time_gpu:
    output:
        table="results/timing/gpu/runs/{gpu}.csv",
    log:
        "logs/timing/gpu/{gpu}.log",
    benchmark:
        "results/benchmarks/timing/gpu/{gpu}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=30,
    params:
        timing=config["timing"],
    script:
        "../../scripts/time_gpu.py"


rule gpu_tables:
    input:
        tables=gpu_timing_tables(),
    output:
        summary=report(
            "results/tables/gpu_kernels.csv",
            caption="../report/gpu_kernels.rst",
            category="Tables",
        ),
        break_even=report(
            "results/tables/gpu_break_even.csv",
            caption="../report/gpu_break_even.rst",
            category="Tables",
        ),
    log:
        "logs/aggregate/gpu_tables.log",
    benchmark:
        "results/benchmarks/aggregate/gpu_tables.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/gpu_tables.py"


rule break_even_shift:
    input:
        cpu="results/tables/break_even.csv",
        models="results/tables/models.csv",
        gpu="results/tables/gpu_break_even.csv",
        scaling=server_cpu_table,
    output:
        table=report(
            "results/tables/break_even_shift.csv",
            caption="../report/break_even_shift.rst",
            category="Tables",
        ),
    log:
        "logs/aggregate/break_even_shift.log",
    benchmark:
        "results/benchmarks/aggregate/break_even_shift.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/break_even_shift.py"


# Every (model shape, length, codec, device) in one break-even table, and the GPU's speed-up curves.
rule break_even_all:
    input:
        cpu="results/tables/break_even.csv",
        models="results/tables/models.csv",
        gpu="results/tables/gpu_break_even.csv",
    output:
        table=report(
            "results/tables/break_even_all.csv",
            caption="../report/break_even_all.rst",
            category="Tables",
        ),
        sweep=report(
            "results/tables/gpu_transfer_sweep.csv",
            caption="../report/gpu_transfer_sweep.rst",
            category="Tables",
        ),
    log:
        "logs/aggregate/break_even_all.log",
    benchmark:
        "results/benchmarks/aggregate/break_even_all.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,
        runtime=10,
    params:
        bandwidths=config["transfer"]["gpu_bandwidths_gbps"],
        cpu_dtype=config["extract"]["dtype"],
    script:
        "../../scripts/break_even_all.py"


# CPU codec times at 1-16 threads of a whole host (issue 27), from the cached tables that
# bench/cpu_scaling.py measured (a CI machine has 2 cores): throughput, speed-up and efficiency.
rule cpu_scaling:
    input:
        tables=cpu_scaling_tables(),
    output:
        table=report(
            "results/tables/cpu_scaling.csv",
            caption="../report/cpu_scaling.rst",
            category="Tables",
        ),
    log:
        "logs/aggregate/cpu_scaling.log",
    benchmark:
        "results/benchmarks/aggregate/cpu_scaling.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/cpu_scaling.py"


# GPU kernels on real caches beside synthetic caches of the same shapes (issue 27), from the cached
# tables of bench/gpu_codecs.py --time-kv: which cache a kernel time was taken on, and what it changes.
rule gpu_real_caches:
    input:
        tables=gpu_real_tables(),
    output:
        table=report(
            "results/tables/gpu_real_caches.csv",
            caption="../report/gpu_real_caches.rst",
            category="Tables",
        ),
    log:
        "logs/aggregate/gpu_real_caches.log",
    benchmark:
        "results/benchmarks/aggregate/gpu_real_caches.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/gpu_real_caches.py"
