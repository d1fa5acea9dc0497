# The learned codec router (issue 9): per-prompt examples from every model's quality records and KV
# caches, labelled with the fastest codec meeting the floor on that prompt, split by prompt.
rule router:
    input:
        quality=quality_files(),
        kv=kv_manifests_all(),
        timings="results/tables/break_even_all.csv",
    output:
        examples="results/router/examples.csv",
        summary=report(
            "results/tables/router.csv",
            caption="../report/router.rst",
            category="Tables",
        ),
        by_bandwidth=report(
            "results/tables/router_by_bandwidth.csv",
            caption="../report/router_by_bandwidth.rst",
            category="Tables",
        ),
    log:
        "logs/router/router.log",
    benchmark:
        "results/benchmarks/router/router.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=mem_router,
        runtime=30,
    params:
        router=config["router"],
        bandwidths=config["transfer"]["gpu_bandwidths_gbps"],
        seed=config["seed"],
        torch_threads=config["torch_threads"],
    script:
        "../../scripts/router.py"
