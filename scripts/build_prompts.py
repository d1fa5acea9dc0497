"""Rule build_prompts: dataset source -> disjoint documents for every length bin."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.prompts import build_prompts  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0], seed=sm.params.seed)
build_prompts(sm.params.spec, sm.output.docs, needs=sm.params.needs, per_bin=sm.params.per_bin, seed=sm.params.seed,
              chars_per_token=sm.params.chars_per_token)
