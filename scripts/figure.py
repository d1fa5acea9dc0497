"""Rule figure: one registered figure (kvwire.figures) drawn from its tables, as PDF and PNG."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.figures import draw_figure  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
draw_figure(sm.wildcards.figure, dict(sm.input.items()), sm.output.pdf, sm.output.png)
