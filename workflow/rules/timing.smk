# CPU timing takes every core so that no neighbouring job disturbs the clock.
rule time_cpu:
    input:
        kv=kv_manifests_for_timing,
    output:
        table="results/timing/cpu/{model}/{codec}.csv",
    log:
        "logs/timing/cpu/{model}/{codec}.log",
    conda:
        "../../envs/torch.yaml"
    threads: workflow.cores
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        codec=codec_of,
        timing=config.get("timing", {}),
        torch_threads=config.get("torch_threads", 2),
    script:
        "../../scripts/time_cpu.py"


# GPU-tagged and never run by `all`: the table is measured on a GPU node (`--profile slurm` asks for
# one) and committed; {gpu} must name the device (h200 -> "NVIDIA H200"), or the job stops.
rule time_gpu:
    output:
        table="results/timing/gpu/{gpu}.csv",
    log:
        "logs/timing/gpu/{gpu}.log",
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
