"""Rule time_gpu: the Triton kernels checked against the CPU codecs and timed on this job's GPU."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.gpu_bench import time_gpu  # noqa: E402
from kvwire.stages.runtime import LOG, setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
opts = sm.params.timing
cases = [(c.rsplit(":", 1)[0], int(c.rsplit(":", 1)[1])) for c in opts["gpu_cases"]] or None
time_gpu(sm.output.table, label=sm.wildcards.gpu, seqs=opts["gpu_seqs"], dtypes=opts["gpu_dtypes"],
         codecs=opts["gpu_codecs"] or None, cases=cases, log=LOG.info)
