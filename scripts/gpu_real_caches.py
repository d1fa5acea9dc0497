"""Rule gpu_real_caches: GPU kernel rows of real caches beside the synthetic caches of their shapes."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.gpu_tables import gpu_real_caches  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
gpu_real_caches(list(sm.input.tables), sm.output.table)
