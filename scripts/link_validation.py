"""Rule link_validation: timed transfers on one link (loopback or a tc-shaped veth) against the model."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.link import validate_configured_link  # noqa: E402
from kvwire.stages.runtime import LOG, setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
validate_configured_link(sm.wildcards.link, sm.params.transfer, sm.output.transfers, sm.output.model, log=LOG.info)
