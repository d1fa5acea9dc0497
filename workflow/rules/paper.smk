# `snakemake paper`: every figure and derived table rebuilt from the committed cached tables alone,
# on a machine with no model, no GPU and none of the study's bulk data. The inner run allows only
# PAPER_RULES, so a cached table is a source file there and never a reason to rerun the experiments
# behind it (a missing one is named in the error); --forceall rebuilds every artifact from it.
rule paper:
    log:
        "logs/paper/paper.log",
    localrule: True
    conda:
        "../../envs/analysis.yaml"
    threads: workflow.cores
    params:
        rules=" ".join(PAPER_RULES),
        config_args=paper_config_args(),
        snakefile=workflow.main_snakefile,
    shell:
        "snakemake --snakefile {params.snakefile} --cores {threads} --forceall"
        " --allowed-rules {params.rules} {params.config_args} -- paper_artifacts"
        " > {log} 2>&1"
        " || {{ tail -n 40 {log}; exit 1; }}"


rule paper_artifacts:
    input:
        paper_outputs(),
