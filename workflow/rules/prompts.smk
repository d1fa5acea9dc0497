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
        needs={b: b + config["prompts"]["continuation"] for b in BINS},
        per_bin=config["prompts"]["per_bin"],
        chars_per_token=config["prompts"]["chars_per_token"],
        seed=config["seed"],
    script:
        "../../scripts/build_prompts.py"
