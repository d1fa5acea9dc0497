"""Rule build_prompts: dataset source -> documents long enough for the largest bin."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.prompts import build_documents, min_chars_for, write_documents  # noqa: E402
from kvwire.stages.runtime import LOG, setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0], seed=sm.params.seed)
docs = build_documents(sm.params.spec, max_docs=sm.params.max_docs, min_chars=min_chars_for(sm.params.max_tokens),
                       seed=sm.params.seed)
write_documents(sm.output.docs, docs)
LOG.info("%d documents from %s", len(docs), docs[0]["source"])
