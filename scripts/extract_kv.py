"""Rule extract_kv: prefill each prompt's prefix and store its KV cache."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.extract import extract_kv  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0], threads=sm.params.torch_threads)
opts = sm.params.extract
extract_kv(sm.input.facts, sm.input.docs, sm.output.manifest, prefix_tokens=sm.params.prefix_tokens,
           continuation=sm.params.continuation, count=sm.params.per_bin, dtype=opts["dtype"],
           device=opts["device"], batch_size=opts["batch_size"],
           attention_stats=opts["attention_stats"], obs_window=opts["obs_window"])
