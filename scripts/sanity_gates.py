"""Rule sanity_gates: identity exact, per-token int8 and KIVI-4 above their floors, on every model."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.runtime import setup  # noqa: E402
from kvwire.stages.tables import sanity_gates  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
sanity_gates(list(sm.input.quality), sm.output.table, sm.params.floors, sm.params.waivers)
