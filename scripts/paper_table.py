"""Rule paper_table: one of the paper's LaTeX tables from the cached summary tables."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.paper import latex_table  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
latex_table(sm.wildcards.table, dict(sm.input.items()), sm.output.tex)
