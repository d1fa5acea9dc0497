# The paper, built from the published tables in paper/tables (committed; `kvwire publish` copies a
# study's results/tables there). No rule writes paper/tables, so `snakemake paper`, or asking for
# paper/kvwire.pdf or any paper figure by its path, runs only the figure, LaTeX-table, macro and
# latexmk jobs below and never the experiments behind the tables. A table missing from paper/tables
# leaves its artefacts out and the PDF says "no data" in their place (each figure's sources in
# kvwire.figures; LATEX_TABLE_SOURCES, paper_macro_tables).
rule paper:
    input:
        paper_outputs(),
    localrule: True


# Which codec to send with, by encoder and bandwidth, at the configured quality floor (its flowchart
# is the figure decision_flowchart of rule figure).
rule decision_table:
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
    log:
        "logs/aggregate/decision_table.log",
    benchmark:
        "results/benchmarks/aggregate/decision_table.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,
        runtime=10,
    params:
        floor=config["paper"]["quality_floor"],
    script:
        "../../scripts/decision_table.py"


rule paper_table:
    input:
        unpack(latex_table_sources),
    output:
        tex="paper/generated/tables/{table}.tex",
    log:
        "logs/paper/paper_table_{table}.log",
    benchmark:
        "results/benchmarks/paper/paper_table_{table}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,
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
    benchmark:
        "results/benchmarks/paper/paper_macros.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,
        runtime=10,
    params:
        floor=config["paper"]["quality_floor"],
    script:
        "../../scripts/paper_macros.py"


# latexmk in paper/ (TeX Live from Debian, see README): the text and bibliography come from the
# repository, everything generated from the working directory's paper/. Without TeX the job stops
# before latexmk with the one line that installs it.
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
    benchmark:
        "results/benchmarks/paper/latexmk.tsv"
    conda:
        "../../envs/latex.yaml"
    threads: 1
    resources:
        mem_mb=TABLE_MEM_MB,
        runtime=10,
    params:
        src=lambda wildcards, input: str(Path(input.tex).parent),
        missing_tex=TEX_MISSING_MESSAGE,
    shell:
        "for tool in latexmk pdflatex bibtex; do command -v $tool >/dev/null ||"
        " {{ echo {params.missing_tex:q} | tee {log} >&2; exit 1; }}; done;"
        " log=$(pwd)/{log}; cd paper && TEXINPUTS=.:{params.src}: BIBINPUTS={params.src}:"
        " latexmk -pdf -interaction=nonstopmode -halt-on-error -jobname=kvwire"
        " {input.tex} > $log 2>&1 || {{ tail -n 40 $log; exit 1; }}"
