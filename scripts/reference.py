"""Rule reference: run each prompt's original cache once; every codec's quality job compares with it."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.quality import reference_for  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0], threads=sm.params.torch_threads)
opts = sm.params.quality
reference_for(sm.input.facts, sm.input.kv, sm.output.reference,
              generate_tokens=opts["generate_tokens"], batch_size=opts["batch_size"],
              dtype=sm.params.dtype, device=sm.params.device)
