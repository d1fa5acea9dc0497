"""Process set-up shared by the stages: logging to a file and the console, torch threads, device."""

from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

import torch

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
    if threads:
        torch.set_num_threads(int(threads))
    random.seed(seed)
    torch.manual_seed(seed)


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` uses a GPU when there is one and says so loudly when there is not."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for (extract.device or quality.device) but no CUDA device "
                               "is visible")
        return torch.device("cuda")
    if requested == "auto":
        LOG.warning("no GPU visible: running this GPU-tagged step on the CPU (slower)")
    return torch.device("cpu")


DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
