"""Rule quality: decode the wire bytes, re-inject them, score against the original cache."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.quality import score_codec  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0], threads=sm.params.torch_threads)
opts = sm.params.quality
score_codec(sm.input.facts, sm.input.kv, Path(sm.input.wire) / "manifest.json", sm.output.quality, reference=sm.input.reference,
            generate_tokens=opts["generate_tokens"], batch_size=opts["batch_size"],
            dtype=sm.params.dtype, device=sm.params.device)
