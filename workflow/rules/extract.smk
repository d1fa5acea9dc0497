# GPU-tagged: on a cluster it asks for a GPU; locally it uses one if present, else the CPU (with a warning).
rule extract_kv:
    input:
        facts=model_facts,
        docs=prompt_docs,
    output:
        manifest="results/kv/{model}/{dataset}/{bin}/manifest.json",
    log:
        "logs/extract/{model}/{dataset}/{bin}.log",
    benchmark:
        "results/benchmarks/extract/{model}/{dataset}/{bin}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: config["torch_threads"]  # the job's torch threads: one-thread jobs run side by side
    resources:
        gpu=1,
        mem_mb=mem_extract,
        runtime=60,
    params:
        prefix_tokens=lambda wc: int(wc.bin),
        continuation=config["prompts"]["continuation"],
        per_bin=config["prompts"]["per_bin"],
        extract=config["extract"],
        torch_threads=config["torch_threads"],
    script:
        "../../scripts/extract_kv.py"
