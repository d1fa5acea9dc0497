"""Rule quality_pairs: configured codec pairs compared on the same documents (paired, document-resampled
bootstrap intervals of the difference)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.runtime import setup  # noqa: E402
from kvwire.stages.tables import quality_pairs  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
quality_pairs(list(sm.input.quality), sm.output.table, [list(p) for p in sm.params.pairs], seed=sm.params.seed)
