rule transfer_model:
    input:
        timing=timing_tables_of_model,
    output:
        sweep="results/transfer/{model}/sweep.csv",
        break_even="results/transfer/{model}/break_even.csv",
    log:
        "logs/transfer/{model}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        bandwidths=config["transfer"]["bandwidths_gbps"],
        latency_us=config["transfer"].get("latency_us", 0),
    script:
        "../../scripts/transfer_model.py"
