"""Rule figure_speedup_cpu_gpu: speed-up vs bandwidth, the same codecs on the CPU and the GPU."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.plots import speedup_cpu_gpu  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
speedup_cpu_gpu(sm.input.cpu, sm.input.gpu, sm.output.pdf, sm.output.png)
