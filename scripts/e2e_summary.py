"""Rule e2e_summary: the end-to-end transfer runs summarised into one cached table."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.e2e import e2e_summary  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
e2e_summary(list(sm.input.tables), sm.output.table)
