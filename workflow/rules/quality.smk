# The original cache's behaviour is computed once per prompt set and shared by every codec's job.
rule reference:
    input:
        facts=model_facts,
        kv=kv_manifest,
    output:
        reference="results/reference/{model}/{dataset}/{bin}.safetensors",
    log:
        "logs/reference/{model}/{dataset}/{bin}.log",
    conda:
        "../../envs/torch.yaml"
    threads: config.get("torch_threads", 2)
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        quality=config.get("quality", {}),
        dtype=config.get("extract", {}).get("dtype", "bfloat16"),
        torch_threads=config.get("torch_threads", 2),
    script:
        "../../scripts/reference.py"


rule quality:
    input:
        facts=model_facts,
        kv=kv_manifest,
        wire=wire_manifest,
        reference=reference_file,
    output:
        quality="results/quality/{model}/{dataset}/{bin}/{codec}.json",
    log:
        "logs/quality/{model}/{dataset}/{bin}/{codec}.log",
    conda:
        "../../envs/torch.yaml"
    threads: config.get("torch_threads", 2)
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        quality=config.get("quality", {}),
        dtype=config.get("extract", {}).get("dtype", "bfloat16"),
        torch_threads=config.get("torch_threads", 2),
    script:
        "../../scripts/quality.py"
