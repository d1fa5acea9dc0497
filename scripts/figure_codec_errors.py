"""Rule figure_codec_errors: compression ratio vs key/value relative MSE per model (seaborn)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821  the repo's own library

from kvwire.plots import codec_errors  # noqa: E402
from kvwire.stages.runtime import setup  # noqa: E402

sm = snakemake  # noqa: F821
setup(sm.log[0])
codec_errors(sm.input.codecs, sm.output.pdf, sm.output.png)
