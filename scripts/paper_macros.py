"""Rule paper_macros: every number the paper quotes, as LaTeX macros from the published tables present."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.paper import paper_macros  # noqa: E402
from kvwire.stages.runtime import LOG, setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
# the published tables present, and the published set's PUBLISHED.json where there is one
macros, missing = paper_macros(dict(sm.input.items()), sm.params.floor, sm.output.macros,
                               manifest=sm.input.get("manifest"))
LOG.info("%d macros (missing tables: %s)", len(macros), ", ".join(missing) or "none")
