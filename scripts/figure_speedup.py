"""Rule figure_speedup: speed-up over raw transfer vs bandwidth (seaborn)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.plots import speedup_vs_bandwidth  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
speedup_vs_bandwidth(sm.input.sweep, sm.output.pdf, sm.output.png)
