"""Rule encode: every prompt's KV file -> a wire container with one codec."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.encode import encode_prompts  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0], threads=sm.params.torch_threads)
codec = sm.params.codec
encode_prompts(sm.input.kv, Path(sm.output.wire) / "manifest.json", codec_id=codec["id"], codec_name=codec["name"],
               params=codec["params"])
