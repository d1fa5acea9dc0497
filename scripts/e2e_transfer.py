"""Rule e2e_transfer: a real cache encoded, streamed over a tc-shaped veth link and decoded, per codec,
against the model fed the break-even's time_cpu tables."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.e2e import e2e_transfer_of_manifest  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
e2e_transfer_of_manifest(sm.input.manifest, sm.params.codecs, float(sm.wildcards.rate), sm.output.table,
                         timing_csvs=list(sm.input.timing), transfer=sm.params.transfer,
                         threads=sm.params.torch_threads)
