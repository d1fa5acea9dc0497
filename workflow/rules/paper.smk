# `snakemake paper`: every figure and derived table rebuilt from the committed cached tables alone,
# on a machine with no model, no GPU and none of the study's bulk data. The inner run allows only
# PAPER_RULES, so a cached table is a source file there and never a reason to rerun the experiments
# behind it; an artifact whose tables are missing is left out and the PDF says so (common.smk:
# FIGURE_SOURCES, LATEX_TABLE_SOURCES, DERIVED); --forceall rebuilds every artifact from them.
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


# Which codec to send with, by encoder and bandwidth, at the configured quality floor; the flowchart
# is drawn from that table.
rule paper_decision:
    input:
        cpu="results/tables/transfer_sweep.csv",
        gpu="results/tables/gpu_transfer_sweep.csv",
        quality="results/tables/quality.csv",
    output:
        table=report(
            "results/tables/decision.csv",
            caption="../report/decision.rst",
            category="Tables",
        ),
        pdf="paper/figures/decision_flowchart.pdf",
        png=report(
            "paper/figures/decision_flowchart.png",
            caption="../report/decision_flowchart.rst",
            category="Figures",
        ),
    log:
        "logs/paper/paper_decision.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        floor=config["paper"]["quality_floor"],
    script:
        "../../scripts/paper_decision.py"


rule paper_table:
    input:
        unpack(latex_table_sources),
    output:
        tex="paper/generated/tables/{table}.tex",
    log:
        "logs/paper/paper_table_{table}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../../scripts/paper_table.py"


rule paper_macros:
    input:
        **paper_macro_tables(),
    output:
        macros="paper/generated/macros.tex",
    log:
        "logs/paper/paper_macros.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        floor=config["paper"]["quality_floor"],
    script:
        "../../scripts/paper_macros.py"


# latexmk in paper/ (TeX Live from Debian, see README): the text and bibliography come from the
# repository, everything generated from the working directory's paper/.
rule paper_pdf:
    input:
        **paper_sources(),
        macros="paper/generated/macros.tex",
        tables=paper_latex_tables(),
        figures=paper_figures(),
    output:
        pdf="paper/kvwire.pdf",
    log:
        "logs/paper/latexmk.log",
    conda:
        "../../envs/latex.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        src=lambda wildcards, input: str(Path(input.tex).parent),
    shell:
        "log=$(pwd)/{log}; cd paper && TEXINPUTS=.:{params.src}: BIBINPUTS={params.src}:"
        " latexmk -pdf -interaction=nonstopmode -halt-on-error -jobname=kvwire"
        " {input.tex} > $log 2>&1 || {{ tail -n 40 $log; exit 1; }}"
