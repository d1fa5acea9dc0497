"""Rule break_even_table: per-model transfer tables -> break-even CSV and LaTeX, joined sweep."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.stages.runtime import setup  # noqa: E402
from kvwire.stages.tables import break_even_table  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
tables = list(sm.input.tables)
break_even_table([t for t in tables if t.endswith("break_even.csv")], [t for t in tables if t.endswith("sweep.csv")],
                 sm.output.csv, sm.output.tex, sm.output.sweep)
