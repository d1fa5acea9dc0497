"""Rule gpu_tables: kernel throughput and break-even tables from the cached GPU timing tables."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.gpu_tables import gpu_tables  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
gpu_tables(list(sm.input.tables), sm.output.summary, sm.output.break_even)
