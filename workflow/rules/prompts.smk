rule build_prompts:
    output:
        docs="resources/prompts/{dataset}.jsonl",
    log:
        "logs/prompts/{dataset}.log",
    benchmark:
        "results/benchmarks/prompts/{dataset}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,
        runtime=20,
    params:
        spec=dataset_spec,
        max_docs=config["prompts"].get("max_docs", 64),
        max_tokens=max(BINS) + config["prompts"]["continuation"],
        seed=config.get("seed", 0),
    script:
        "../../scripts/build_prompts.py"
