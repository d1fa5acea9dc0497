rule transfer_model:
    input:
        timing=timing_tables_of_model,
    output:
        sweep="results/transfer/{model}/sweep.csv",
        break_even="results/transfer/{model}/break_even.csv",
    params:
        bandwidths=config["transfer"]["bandwidths_gbps"],
        latency_us=config["transfer"].get("latency_us", 0),
    log:
        "logs/transfer/{model}.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/analysis.yaml"
    script:
        "../../scripts/transfer_model.py"
