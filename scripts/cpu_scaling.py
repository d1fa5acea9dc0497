"""Rule cpu_scaling: CPU codec throughput at 1-16 threads from the cached scaling tables."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.cpu_scaling import cpu_scaling  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
cpu_scaling(list(sm.input.tables), sm.output.table)
