# Paged KV offload (issue 10, docs/OFFLOAD.md): traces recorded from the real models on the CPU,
# replayed on a GPU (GPU-tagged, outside `all`: its table is committed) and simulated on the CPU.
rule offload_trace:
    input:
        facts=model_facts,
    output:
        manifest="results/offload/traces/{model}/manifest.json",
    log:
        "logs/offload/trace_{model}.log",
    benchmark:
        "results/benchmarks/offload/trace_{model}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: config["torch_threads"]  # the job's torch threads, as extract_kv: one-thread jobs run side by side
    resources:
        mem_mb=mem_offload_trace,
        runtime=60,
    params:
        model_dir=model_dir,
        dataset=offload_dataset,
        offload=config["offload"],
        dtype=config["extract"]["dtype"],
        seed=config["seed"],
        torch_threads=config["torch_threads"],
    script:
        "../../scripts/offload_trace.py"


# {gpu} labels the run (h200); copy its table and calibration to offload.gpu_table / calibration
# (results/offload/gpu/, committed) to make them the study's.
rule offload_gpu:
    input:
        traces=offload_traces_all(),
    output:
        table="results/offload/gpu/runs/{gpu}.csv",
        calibration="results/offload/gpu/runs/{gpu}.calibration.json",
    log:
        "logs/offload/gpu_{gpu}.log",
    benchmark:
        "results/benchmarks/offload/gpu_{gpu}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=30,
    params:
        offload=config["offload"],
        seed=config["seed"],
    script:
        "../../scripts/offload_gpu.py"


rule offload_simulate:
    input:
        traces=offload_simulated_traces(),
        calibration=config["offload"]["calibration"],
    output:
        table="results/offload/sim/offload_sim.csv",
    log:
        "logs/offload/simulate.log",
    benchmark:
        "results/benchmarks/offload/simulate.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,  # reads traces and a calibration: it peaked at 357 MB
        runtime=20,
    params:
        offload=config["offload"],
    script:
        "../../scripts/offload_simulate.py"


rule offload_table:
    input:
        gpu=config["offload"]["gpu_table"],
        sim="results/offload/sim/offload_sim.csv",
    output:
        table=report(
            "results/tables/offload.csv",
            caption="../report/offload.rst",
            category="Tables",
        ),
    log:
        "logs/offload/table.log",
    benchmark:
        "results/benchmarks/offload/table.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,
        runtime=10,
    script:
        "../../scripts/offload_table.py"
