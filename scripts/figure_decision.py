"""Rule figure_decision: the decision flowchart drawn from the decision table."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.paper.flowchart import flowchart  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
flowchart(sm.input.table, sm.output.pdf, sm.output.png)
