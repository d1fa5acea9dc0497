"""Rule figure_e2e: measured end-to-end transfer time against the pipelined model."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.plots import e2e_model_vs_measured  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
e2e_model_vs_measured(sm.input.table, sm.output.pdf, sm.output.png)
