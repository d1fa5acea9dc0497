"""Rule quality_table: per-job quality results -> results/tables/quality.csv."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.runtime import setup  # noqa: E402
from kvwire.stages.tables import quality_table  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
quality_table(list(sm.input.quality), sm.output.table, sm.output.cost)
