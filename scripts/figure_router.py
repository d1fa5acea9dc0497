"""Rule figure_router: the router's regret and quality-floor violations by bandwidth."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.paper.router_figure import router_regret  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
router_regret(sm.input.by_bandwidth, sm.output.pdf, sm.output.png)
