rule encode:
    input:
        kv=kv_manifest,
    output:
        manifest="results/wire/{model}/{dataset}/{bin}/{codec}/manifest.json",
    log:
        "logs/encode/{model}/{dataset}/{bin}/{codec}.log",
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
