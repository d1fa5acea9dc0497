"""Rule offload_gpu: the traces replayed on this job's GPU (trace-driven: real copies, same-shape compute)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.offload import gpu_study  # noqa: E402
from kvwire.stages.runtime import LOG, setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0], seed=sm.params.seed)
gpu_study(sm.input.traces, sm.params.offload, sm.output.table, sm.output.calibration,
          label=sm.wildcards.gpu, log=LOG.info)
