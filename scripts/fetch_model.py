"""Rule fetch_model: resolve one model source to a dense local copy and record its facts."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.models import fetch_model  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0], threads=sm.threads)
fetch_model(sm.wildcards.model, sm.params.spec, sm.output.facts, cache_dir=sm.params.cache)
