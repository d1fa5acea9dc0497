"""Rule paper_decision: the decision table (codec by encoder and bandwidth) and its flowchart."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.paper.decision import decision_table  # noqa: E402
from kvwire.paper.flowchart import flowchart  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
decision_table(sm.input.cpu, sm.input.gpu, sm.input.quality, sm.params.floor, sm.output.table)
flowchart(sm.output.table, sm.output.pdf, sm.output.png)
