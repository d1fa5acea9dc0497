"""Rule figure_break_even_shift: break-even bandwidth on the CPU against the GPU, per codec and model."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.plots import break_even_shift  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
break_even_shift(sm.input.table, sm.output.pdf, sm.output.png)
