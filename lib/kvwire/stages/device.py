"""The device a GPU-tagged stage runs on, and the dtypes the config names."""

from __future__ import annotations

import torch

from .runtime import LOG


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
