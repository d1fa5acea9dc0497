"""Rule figure_quality_pairs: each configured codec pair's difference with its interval (forest plot)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.plots import quality_pairs_forest  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
quality_pairs_forest(sm.input.pairs, sm.output.pdf, sm.output.png)
