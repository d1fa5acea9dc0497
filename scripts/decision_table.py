"""Rule decision_table: which codec to send with, by encoder and bandwidth (its flowchart is the figure decision_flowchart, rule figure)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.paper import decision_table  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
decision_table(sm.input.cpu, sm.input.gpu, sm.input.quality, sm.params.floor, sm.output.table)
