"""Rule figure_gpu_kernels: kernel throughput against each GPU's copy bandwidth, codec by codec."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.plots import gpu_kernel_throughput  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
gpu_kernel_throughput(sm.input.summary, sm.output.pdf, sm.output.png)
