"""Process set-up shared by the stages: logging to a file and the console, seeds, torch threads.
Importing it does not import torch (table and figure jobs never need it: 2 s per job)."""

from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

LOG = logging.getLogger("kvwire")


def setup(log_path: str | Path | None = None, *, threads: int | None = None, seed: int = 0) -> None:
    """Log to ``log_path`` and stderr; fix torch's thread count and the seeds (results must not
    depend on how many cores the scheduler happened to give the job)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        handlers=handlers, force=True)
    random.seed(seed)
    # torch is seeded and threaded where a stage uses it (its module imported it already) or asked
    if threads or "torch" in sys.modules:
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        torch.manual_seed(seed)
