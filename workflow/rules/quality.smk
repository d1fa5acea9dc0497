rule quality:
    input:
        facts=model_facts,
        kv=kv_manifest,
        wire=wire_manifest,
    output:
        quality="results/quality/{model}/{dataset}/{bin}/{codec}.json",
    params:
        quality=config.get("quality", {}),
        dtype=config.get("extract", {}).get("dtype", "bfloat16"),
        torch_threads=config.get("torch_threads", 2),
    log:
        "logs/quality/{model}/{dataset}/{bin}/{codec}.log",
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/torch.yaml"
    script:
        "../../scripts/quality.py"
