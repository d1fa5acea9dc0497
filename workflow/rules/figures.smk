# The figures of a result set: one rule for every figure registered in kvwire.figures (one module per
# figure: its source tables, caption and draw function). {root} is "results" (this checkout's study:
# results/tables -> results/figures, part of `all`) or "paper" (the published tables the paper is built
# from, committed: paper/tables -> paper/figures). No rule writes paper/tables, so asking for a paper
# figure, or the PDF, never plans the study behind its tables. common.smk derives which figures `all`
# and the paper ask for from the registry's sources.


rule figure:
    input:
        unpack(figure_inputs),
    output:
        pdf="{root}/figures/{figure}.pdf",
        png=report(
            "{root}/figures/{figure}.png",
            caption="../report/figure.rst",
            category="Figures",
        ),
    log:
        "logs/{root}/figures/{figure}.log",
    benchmark:
        "results/benchmarks/{root}/figures/{figure}.tsv"
    wildcard_constraints:
        figure=_alternatives(FIGURES),
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=FIGURE_MEM_MB,
        runtime=10,
    params:
        caption=figure_caption,
    script:
        "../../scripts/figure.py"
