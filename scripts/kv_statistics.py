"""Rule kv_statistics: a model's real caches -> per-layer statistics (outlier channels, dynamic range, kurtosis)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.runtime import setup  # noqa: E402
from kvwire.stages.tables import kv_statistics  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0], threads=sm.params.torch_threads)
kv_statistics(list(sm.input.kv), sm.output.table, model=sm.wildcards.model)
