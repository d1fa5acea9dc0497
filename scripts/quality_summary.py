"""Rule quality_summary: codec x model table with paired bootstrap CIs, cosine-vs-quality Spearman and
per-layer attention retention."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.runtime import setup  # noqa: E402
from kvwire.stages.tables import quality_summary  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
quality_summary(list(sm.input.quality), sm.output.by_model, sm.output.spearman, sm.output.retention,
                seed=sm.params.seed)
