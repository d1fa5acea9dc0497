"""Rule figure_cosine_vs_ce: 1 - cosine vs delta cross-entropy per codec, Spearman per model (seaborn)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.plots import cosine_vs_delta_ce  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
cosine_vs_delta_ce(sm.input.quality, sm.input.spearman, sm.output.pdf, sm.output.png)
