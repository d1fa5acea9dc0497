"""Rule build_prompts: dataset source -> disjoint documents for every length bin."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.prompts import build_bin_documents, write_documents  # noqa: E402
from kvwire.stages.runtime import LOG, setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0], seed=sm.params.seed)
docs = build_bin_documents(sm.params.spec, needs=sm.params.needs, per_bin=sm.params.per_bin, seed=sm.params.seed,
                           chars_per_token=sm.params.chars_per_token)
write_documents(sm.output.docs, docs)
LOG.info("%d documents (%d units, none shared) from %s for bins %s", len(docs), sum(len(d["units"]) for d in docs),
         docs[0]["source"], sorted(sm.params.needs))
