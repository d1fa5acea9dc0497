# The original cache's behaviour is computed once per model (every dataset and bin) and shared by every codec's job.
rule reference:
    input:
        facts=model_facts,
        kv=kv_manifests_of_model,
    output:
        reference="results/reference/{model}.safetensors",
    log:
        "logs/reference/{model}.log",
    benchmark:
        "results/benchmarks/reference/{model}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: config["torch_threads"]
    resources:
        mem_mb=mem_scoring("reference"),
        runtime=60,
    params:
        quality=config["quality"],
        dtype=config["quality"]["dtype"],
        device=config["quality"]["device"],
        torch_threads=config["torch_threads"],
    script:
        "../../scripts/reference.py"


rule quality:
    input:
        facts=model_facts,
        kv=kv_manifests_of_model,
        wire=wire_containers,
        reference=reference_file,
    output:
        quality="results/quality/{model}/{codec}.json",
    log:
        "logs/quality/{model}/{codec}.log",
    benchmark:
        "results/benchmarks/quality/{model}/{codec}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: config["torch_threads"]
    resources:
        mem_mb=mem_scoring("quality"),
        runtime=60,
    params:
        quality=config["quality"],
        dtype=config["quality"]["dtype"],
        device=config["quality"]["device"],
        torch_threads=config["torch_threads"],
    script:
        "../../scripts/quality.py"
