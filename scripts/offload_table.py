"""Rule offload_table: GPU replay and simulation rows side by side, with the simulation's error."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.offload import offload_table  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
offload_table(sm.input.gpu, sm.input.sim, sm.output.table)
