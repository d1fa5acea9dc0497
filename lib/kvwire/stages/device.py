"""The device a GPU-tagged stage runs on, and the dtypes the config names."""

from __future__ import annotations

import torch

from ..errors import KvwireError
from .runtime import FILE_ONLY, LOG


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` uses a GPU when there is one and else the CPU, saying so in the job's log (the
    workflow says it once per run on the console: common.smk)."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise KvwireError("device 'cuda' was asked for (extract.device or quality.device) but no CUDA device "
                               "is visible")
        return torch.device("cuda")
    if requested == "auto":
        LOG.warning("no GPU visible: running this GPU-tagged step on the CPU (slower)", extra=FILE_ONLY)
    return torch.device("cpu")


DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
