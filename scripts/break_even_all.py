"""Rule break_even_all: one break-even table over (model shape, length, codec, CPU/GPU), and the GPU's
speed-up curves."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.break_even import break_even_all  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
break_even_all(sm.input.cpu, sm.input.models, sm.input.gpu, sm.params.bandwidths, sm.output.table,
               sm.output.sweep, cpu_dtype=sm.params.cpu_dtype)
