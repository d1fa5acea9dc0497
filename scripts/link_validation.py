"""Rule link_validation: timed transfers on one link (loopback or a tc-shaped veth) against the model."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.netlab import sizes_log  # noqa: E402
from kvwire.stages.link import validate_link  # noqa: E402
from kvwire.stages.runtime import LOG, setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
cfg = sm.params.transfer
link = sm.wildcards.link
rate = None if link == "loopback" else float(link.removeprefix("veth"))
lo, hi = cfg["link_sizes"]
validate_link("loopback" if rate is None else "veth", rate, sizes_log(lo, hi, 3), cfg["link_repeats"],
              sm.output.transfers, sm.output.model, log=LOG.info)
