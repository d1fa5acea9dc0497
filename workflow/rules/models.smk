rule fetch_model:
    output:
        facts="resources/models/{model}/facts.json",
    params:
        spec=model_spec,
        cache="resources/cache",
    log:
        "logs/models/{model}.log",
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/torch.yaml"
    script:
        "../../scripts/fetch_model.py"
