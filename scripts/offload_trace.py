"""Rule offload_trace: one model's attention/page-access traces at every offload context (CPU)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.offload import record_traces  # noqa: E402
from kvwire.stages.runtime import LOG, setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0], threads=sm.params.torch_threads, seed=sm.params.seed)
record_traces(sm.params.model_dir, sm.wildcards.model, sm.params.dataset, sm.params.offload,
              Path(sm.output.manifest).parent, seed=sm.params.seed, dtype=sm.params.dtype, log=LOG.info)
