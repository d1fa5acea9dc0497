rule encode:
    input:
        kv=kv_manifest,
    output:
        manifest="results/wire/{model}/{dataset}/{bin}/{codec}/manifest.json",
    params:
        codec=codec_of,
        torch_threads=config.get("torch_threads", 2),
    log:
        "logs/encode/{model}/{dataset}/{bin}/{codec}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/torch.yaml"
    script:
        "../../scripts/encode.py"
