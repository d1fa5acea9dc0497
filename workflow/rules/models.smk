rule fetch_model:
    output:
        facts="resources/models/{model}/facts.json",
    log:
        "logs/models/{model}.log",
    benchmark:
        "results/benchmarks/models/{model}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=mem_fetch_model,
        runtime=60,
    params:
        spec=model_spec,
        cache=os.environ.get("KVWIRE_CACHE", "resources/cache/pypi"),
    script:
        "../../scripts/fetch_model.py"
