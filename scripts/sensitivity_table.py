"""Rule sensitivity_table: model shape + cache statistics + each codec's quality drop, one row per model."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.runtime import setup  # noqa: E402
from kvwire.stages.tables import model_sensitivity  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
model_sensitivity(list(sm.input.kvstats), sm.input.models, sm.input.quality, sm.output.table)
