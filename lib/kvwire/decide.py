"""The study's one decision rule: send a cache with the fastest codec that meets the quality floor,
where that is faster than sending it raw. ``kvwire recommend``, the router's oracle labels and the
paper's decision table all ask this function, so they cannot disagree on what "best" means."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class Decision:
    choice: str  # a codec, or "raw"
    seconds: float  # the choice's expected time (the raw transfer's where the choice is raw)
    best: str | None  # the fastest codec meeting the floor, whether or not it beats raw (None: no codec does)
    best_seconds: float  # its expected time (NaN where ``best`` is None)


def fastest_meeting_floor(seconds: Mapping[str, float], meets_floor: Mapping[str, bool], raw_s: float) -> Decision:
    """Among the codecs of ``seconds`` (expected end-to-end time) whose ``meets_floor`` is true, the
    fastest; it is the choice where it beats ``raw_s``, else the choice is ``raw``. Ties go to the
    codec name that sorts first (a stable, config-order-free rule)."""
    eligible = sorted((float(s), c) for c, s in seconds.items() if meets_floor.get(c, False) and not math.isnan(s))
    if not eligible:
        return Decision("raw", float(raw_s), None, math.nan)
    best_s, best = eligible[0]
    if best_s < raw_s:
        return Decision(best, best_s, best, best_s)
    return Decision("raw", float(raw_s), best, best_s)
