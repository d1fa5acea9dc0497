"""Sanity gates: properties a correct pipeline must show on every model before any result is published.

- ``identity``: the identity codec reproduces the original cache exactly: every prompt scores token
  agreement 1, delta cross-entropy 0, greedy match 1 and zero K/V error.
- a floor on mean token agreement for named codecs; by default per-token ``int8`` >= 0.99 and
  ``kivi4`` >= 0.95 (near-lossless settings: falling below means the harness, not the codec, is
  suspect -- e.g. scoring in bf16, where one ulp of noise alone costs 2 % agreement).

A failed gate whose cause has been found can be waived per (model, codec) with the reason
(config key ``gate_waivers``): the table still shows it failed, with the reason beside it, and it no
longer stops the study. Gemma-3-270M's per-token int8 is the case in point (docs/QUALITY.md).
"""

from __future__ import annotations

from typing import Mapping

import pandas as pd

from .errors import GateError

DEFAULT_FLOORS = {"int8": 0.99, "kivi4": 0.95}
EXACT_METRICS = {"token_agreement": 1.0, "delta_ce": 0.0, "greedy_match": 1.0, "key_rel_mse": 0.0,
                 "value_rel_mse": 0.0}


def evaluate_gates(prompt_rows: pd.DataFrame, floors: Mapping[str, float] | None = None,
                   waivers: Mapping[str, Mapping[str, str]] | None = None) -> pd.DataFrame:
    """One row per (model, gate): what was required, what was measured, whether it passed, and the
    reason a failure is waived (``waivers[model][gate]``; empty when none applies).

    ``prompt_rows``: per-prompt quality rows with at least model, codec and the metrics above.
    A gate whose codec is missing from a model's results fails (``detail`` says so).
    """
    floors = DEFAULT_FLOORS if floors is None else dict(floors)
    out = []
    for model, rows in prompt_rows.groupby("model", sort=True):
        ident = rows[rows.codec == "identity"]
        if ident.empty:
            out.append(_row(model, "identity", "exact", None, None, False, "identity codec not in the study"))
        else:
            bad = {m: int((ident[m] != v).sum()) for m, v in EXACT_METRICS.items() if m in ident}
            failing = {m: n for m, n in bad.items() if n}
            detail = "; ".join(f"{m} differs on {n} of {len(ident)} prompts" for m, n in failing.items())
            out.append(_row(model, "identity", "exact", 1.0, float(ident.token_agreement.mean()), not failing,
                            detail or f"exact on {len(ident)} prompts"))
        for codec, floor in sorted(floors.items()):
            got = rows[rows.codec == codec]
            if got.empty:
                out.append(_row(model, codec, "token_agreement", floor, None, False, f"codec {codec!r} not in the study"))
                continue
            mean = float(got.token_agreement.mean())
            out.append(_row(model, codec, "token_agreement", floor, mean, mean >= floor,
                            f"mean over {len(got)} prompts, weakest prompt {got.token_agreement.min():.4f}"))
    table = pd.DataFrame(out)
    waivers = waivers or {}
    table["waived"] = [("" if passed else waivers.get(model, {}).get(gate, ""))
                       for model, gate, passed in zip(table.model, table.gate, table.passed)]
    return table


def require_gates(table: pd.DataFrame) -> None:
    """Raise GateError naming every failed gate that has no waiver."""
    waived = table["waived"].fillna("").astype(bool) if "waived" in table else False
    failed = table[~table.passed & ~waived]
    if len(failed):
        lines = [f"  {r.model}: {r.gate} ({r.metric} >= {r.threshold}): measured {r.value} -- {r.detail}"
                 for r in failed.itertuples()]
        raise GateError("sanity gates failed; find out why before publishing anything:\n" + "\n".join(lines))


def _row(model, gate, metric, threshold, value, passed, detail) -> dict:
    return {"model": model, "gate": gate, "metric": metric, "threshold": threshold, "value": value,
            "passed": bool(passed), "detail": detail}
