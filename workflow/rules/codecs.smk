rule encode:
    input:
        kv=kv_manifests_of_model,
    output:
        manifest="results/wire/{model}/{codec}/manifest.json",
    log:
        "logs/encode/{model}/{codec}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        codec=codec_of,
        torch_threads=config.get("torch_threads", 2),
    script:
        "../../scripts/encode.py"
