"""Rule resource_usage: every job's benchmark file and logged peak memory -> results/tables/resources.csv."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.runtime import setup  # noqa: E402
from kvwire.stages.usage import usage_table  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
usage_table(list(sm.input.benchmarks), sm.output.table)
