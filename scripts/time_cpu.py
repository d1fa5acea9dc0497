"""Rule time_cpu: per-layer CPU encode/decode times of one codec on real KV of every bin."""
import os
import sys
from pathlib import Path

# This job owns every core (threads: workflow.cores), so OpenMP threads may spin between ops
# instead of sleeping: set before torch loads OpenMP (kvwire's PASSIVE default suits shared cores).
os.environ["OMP_WAIT_POLICY"] = "ACTIVE"

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.runtime import setup  # noqa: E402
from kvwire.stages.timing import time_cpu  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0], threads=sm.params.torch_threads)
codec, opts = sm.params.codec, sm.params.timing
time_cpu(list(sm.input.kv), sm.output.table, codec_id=codec["id"], codec_name=codec["name"],
         params=codec["params"], repeats=opts["repeats"], warmup=opts["warmup"],
         timer=opts["timer"])
