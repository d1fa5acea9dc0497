rule build_prompts:
    output:
        docs="resources/prompts/{dataset}.jsonl",
    params:
        spec=dataset_spec,
        max_docs=config["prompts"].get("max_docs", 64),
        max_tokens=max(BINS) + config["prompts"]["continuation"],
        seed=config.get("seed", 0),
    log:
        "logs/prompts/{dataset}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        "../../envs/torch.yaml"
    script:
        "../../scripts/build_prompts.py"
