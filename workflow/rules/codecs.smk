rule encode:
    input:
        facts=model_facts,
        kv=kv_manifests_of_model,
    output:
        wire=wire_output(),
    log:
        "logs/encode/{model}/{codec}.log",
    benchmark:
        "results/benchmarks/encode/{model}/{codec}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=mem_cache("encode"),
        runtime=30,
    params:
        codec=codec_of,
        torch_threads=config["torch_threads"],
    script:
        "../../scripts/encode.py"
