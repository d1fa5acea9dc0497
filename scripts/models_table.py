"""Rule models_table: every model's recorded facts -> results/tables/models.csv."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.runtime import setup  # noqa: E402
from kvwire.stages.tables import models_table  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
models_table(list(sm.input.facts), sm.output.table)
