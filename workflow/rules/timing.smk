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
