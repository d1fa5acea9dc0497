"""Rule paper_table: one of the paper's LaTeX tables from the cached summary tables."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

import pandas as pd  # noqa: E402

from kvwire.paper import latex_tables  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
table, out = sm.wildcards.table, sm.output.tex
if table == "codecs":
    latex_tables.codec_table(sm.input.quality, out)
elif table == "break_even":
    latex_tables.break_even_table(sm.input.break_even_all, list(pd.read_csv(sm.input.models)["name"]), out)
elif table == "sensitivity":
    latex_tables.sensitivity_table(sm.input.sensitivity, out)
elif table == "kernels":
    latex_tables.kernel_table(sm.input.gpu_kernels, out)
else:
    raise ValueError(f"no LaTeX table named {table!r}")
