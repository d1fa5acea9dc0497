"""Rule transfer_model: analytical sequential/pipelined transfer times and break-even bandwidths."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.runtime import setup  # noqa: E402
from kvwire.stages.transfer import model_transfer  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
model_transfer(list(sm.input.timing), sm.output.sweep, sm.output.break_even,
               bandwidths_gbps=sm.params.bandwidths, latency_us=sm.params.latency_us)
