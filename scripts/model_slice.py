"""Rule model_slice: the manifest of one model's slice (every per-model output, size and sha256)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.manifest import slice_manifest  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
slice_manifest(sm.wildcards.model, list(sm.input), sm.output.manifest)
