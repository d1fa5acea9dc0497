"""Rule break_even_shift: break-even bandwidth on the CPU against the GPU (its figure is break_even_shift, rule figure)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.gpu_tables import break_even_shift_table  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
scaling = list(sm.input.scaling)  # the whole-server CPU table, where cached timings exist
break_even_shift_table(sm.input.cpu, sm.input.models, sm.input.gpu, sm.output.table,
                       scaling[0] if scaling else None)
