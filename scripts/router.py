"""Rule router: label per-prompt examples, train the codec router on some prompts, test it on the others."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.router import router_study  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0], threads=sm.params.torch_threads, seed=sm.params.seed)
p = sm.params.router
router_study(list(sm.input.quality), list(sm.input.kv), sm.input.timings, sm.params.bandwidths, p["quality_floor"],
             sm.output.examples, sm.output.summary, sm.output.by_bandwidth, seed=sm.params.seed)
