"""Stage: one dataset's documents for every prompt-length bin (rule build_prompts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..prompts import build_bin_documents, write_documents
from .runtime import LOG


def build_prompts(spec: Mapping[str, Any], out_json: str | Path, *, needs: Sequence[int], per_bin: int, seed: int,
                  chars_per_token: float) -> list[dict]:
    """Documents enough for ``per_bin`` prompts of every bin length in ``needs`` (none shared), written."""
    docs = build_bin_documents(spec, needs=needs, per_bin=per_bin, seed=seed, chars_per_token=chars_per_token)
    write_documents(out_json, docs)
    LOG.info("%d documents (%d units, none shared) from %s for bins %s", len(docs),
             sum(len(d["units"]) for d in docs), docs[0]["source"], sorted(needs))
    return docs
