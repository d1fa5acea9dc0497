"""Stage: a model's dense local copy and its facts (rule fetch_model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..models import materialize


def fetch_model(name: str, spec: Mapping[str, Any], facts_json: str | Path, *, cache_dir: str | Path) -> None:
    """Resolve ``spec``'s source into the folder holding ``facts_json`` (checksums verified)."""
    materialize(name, spec, Path(facts_json).parent, cache_dir=cache_dir)
