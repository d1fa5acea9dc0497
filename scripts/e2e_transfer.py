"""Rule e2e_transfer: a real cache encoded, streamed over a tc-shaped veth link and decoded, per codec,
against the model fed the break-even's time_cpu tables."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.config import codec_spec  # noqa: E402
from kvwire.stages.e2e import e2e_transfer  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
codecs = [(cid, *codec_spec(cid, sm.params.codecs[cid])) for cid in sm.params.codecs]
manifest = json.loads(Path(sm.input.manifest).read_text())
kv = Path(sm.input.manifest).parent / manifest["prompts"][0]["file"]
timing = {Path(p).stem: p for p in sm.input.timing}  # results/timing/cpu/{model}/{codec}.csv
e2e_transfer(kv, codecs, float(sm.wildcards.rate), sm.output.table, timing_csvs=timing,
             dataset=manifest["dataset"], bin_tokens=int(manifest["prefix_tokens"]),
             repeats=sm.params.transfer["link_repeats"], threads=sm.params.torch_threads,
             wire_limits=sm.params.transfer["wire_limits"])
