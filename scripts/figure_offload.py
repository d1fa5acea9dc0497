"""Rule figure_offload: latency against context per mode, and the pool's hit rate and stall share."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.paper.offload_figure import offload_latency, offload_pool  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
offload_latency(sm.input.table, sm.output.latency_pdf, sm.output.latency_png)
offload_pool(sm.input.table, sm.output.pool_pdf, sm.output.pool_png)
