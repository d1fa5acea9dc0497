"""Rule quality_summary: codec x model table with paired bootstrap CIs, cosine-vs-quality Spearman and
per-layer attention retention."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.runtime import setup  # noqa: E402
from kvwire.stages.tables import attention_retention_table, cosine_spearman, quality_by_model  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
quality_by_model(list(sm.input.quality), sm.output.by_model, seed=sm.params.seed)
cosine_spearman(list(sm.input.quality), sm.output.spearman)
attention_retention_table(list(sm.input.quality), sm.output.retention)
