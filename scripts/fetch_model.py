"""Rule fetch_model: resolve one model source to a dense local copy and record its facts."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.models import materialize  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0], threads=sm.threads)
materialize(sm.wildcards.model, sm.params.spec, Path(sm.output.facts).parent, cache_dir=sm.params.cache)
