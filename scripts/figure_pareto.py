"""Rule figure_pareto: compression ratio vs token agreement with CIs, Pareto front per model (seaborn)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.plots import pareto_per_model  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
pareto_per_model(sm.input.quality, sm.output.pdf, sm.output.png)
