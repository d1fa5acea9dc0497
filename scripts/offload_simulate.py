"""Rule offload_simulate: the same plans timed by the discrete-event simulation (CPU, labelled so)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.offload import simulate_study  # noqa: E402
from kvwire.stages.runtime import LOG, setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
simulate_study(sm.input.traces, sm.params.offload, sm.input.calibration,
               sm.output.table, log=LOG.info)
