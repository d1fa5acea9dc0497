"""Rule quality_by_bin: per-job quality results -> results/tables/quality_by_bin.csv and the CPU cost table."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.runtime import setup  # noqa: E402
from kvwire.stages.tables import quality_by_bin  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
quality_by_bin(list(sm.input.quality), sm.output.table, sm.output.cost)
