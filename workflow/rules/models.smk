rule fetch_model:
    output:
        facts="resources/models/{model}/facts.json",
    log:
        "logs/models/{model}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        spec=model_spec,
        cache=os.environ.get("KVWIRE_CACHE", "resources/cache/pypi"),
    script:
        "../../scripts/fetch_model.py"
