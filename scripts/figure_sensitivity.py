"""Rule figure_sensitivity: per-model quality drop of every codec against identity (heatmap) (seaborn)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.plots import sensitivity_heatmap  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
sensitivity_heatmap(sm.input.quality, sm.output.pdf, sm.output.png, metric=sm.params.metric)
