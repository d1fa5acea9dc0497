"""Stage: validate the transfer model's link term on a measured link (loopback, or a tc-shaped veth).

For one link: timed transfers of every size (``netlab.measure``), the fitted latency and effective
rate (sizes >= 1 MB), and per size the model's error twice: with the fitted terms and with the
nominal ones (the shaped rate, zero latency: what the analytical sweep assumes). The fitted error is
on the fitting data; ``rel_error_heldout`` is the honest one: the line fitted on every other size
(>= 1 MB) and scored on the sizes it did not see (NaN on the sizes it was fitted on).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from .. import netlab
from ..errors import KvwireError
from ..io import write_csv


def validate_link(kind: str, rate_gbps: float | None, sizes: list[int], repeats: int,
                  transfers_csv: str | Path, model_csv: str | Path, *, log=print) -> pd.DataFrame:
    link_cm = netlab.loopback() if kind == "loopback" else netlab.veth_link(rate_gbps)
    with link_cm as link:
        rows = netlab.measure(link, sizes, repeats=repeats)
    write_csv(transfers_csv, pd.DataFrame(rows))
    fit = netlab.fit_link(rows)
    log(f"{kind} {rate_gbps or ''}: fitted latency {fit.latency_s * 1e6:.1f} us, rate {fit.rate_gbps:.3f} Gbps")
    fitted = pd.DataFrame(netlab.model_error(rows, fit.latency_s, fit.rate_gbps))
    out = fitted.rename(columns={"model_s": "model_fitted_s", "rel_error": "rel_error_fitted"})
    if rate_gbps:
        nominal = pd.DataFrame(netlab.model_error(rows, 0.0, rate_gbps))
        out["model_nominal_s"] = nominal["model_s"]
        out["rel_error_nominal"] = nominal["rel_error"]
    out["rel_error_heldout"] = heldout_errors(rows)
    out.insert(0, "link", kind)
    out.insert(1, "rate_gbps", rate_gbps)
    out["fitted_latency_s"] = fit.latency_s
    out["fitted_rate_gbps"] = fit.rate_gbps
    write_csv(model_csv, out)
    return out


def heldout_errors(rows: list[dict], *, min_bytes: int = 1 << 20) -> list[float]:
    """Per measured size (ascending): the relative error of a line fitted on every other size of at
    least ``min_bytes`` (the 1st, 3rd, ...), at the sizes it was not fitted on; NaN at the fitted
    sizes, and everywhere when fewer than four sizes qualify (two to fit, two to test)."""
    sizes = sorted({int(r["bytes"]) for r in rows})
    big = [n for n in sizes if n >= min_bytes]
    if len(big) < 4:
        return [float("nan")] * len(sizes)
    fit_sizes = set(big[::2])
    fit = netlab.fit_link([r for r in rows if int(r["bytes"]) in fit_sizes], min_bytes=min_bytes)
    errors = netlab.model_error(rows, fit.latency_s, fit.rate_gbps)
    return [float("nan") if e["bytes"] in fit_sizes else e["rel_error"] for e in errors]


def link_summary(model_csvs: list[str | Path], out_csv: str | Path) -> pd.DataFrame:
    """Model error per link and size band (<1 MB, 1-100 MB, >=100 MB): max and median."""
    if not model_csvs:
        raise KvwireError("no link measurements to summarise: run link_validation first "
                         "(as root: snakemake --cores 1 link_validation_all)")
    t = pd.concat([pd.read_csv(p) for p in model_csvs], ignore_index=True)
    bands = pd.cut(t["bytes"], [0, 1 << 20, 100 << 20, float("inf")], right=False,
                   labels=["< 1 MB", "1-100 MB", ">= 100 MB"])
    t = t.assign(band=bands)
    agg = {"rel_error_fitted": ["median", "max"], "fitted_rate_gbps": "first", "fitted_latency_s": "first"}
    if "rel_error_nominal" in t.columns:
        agg["rel_error_nominal"] = ["median", "max"]
    if "rel_error_heldout" in t.columns:  # measurements from before the held-out fit lack it
        agg["rel_error_heldout"] = ["median", "max"]
    s = t.groupby(["link", "rate_gbps", "band"], dropna=False, observed=True).agg(agg)
    s.columns = ["_".join(c) for c in s.columns]
    s = s.reset_index()
    write_csv(out_csv, s)
    return s


def validate_configured_link(link: str, transfer: Mapping[str, Any], transfers_csv: str | Path,
                             model_csv: str | Path, *, log=print) -> pd.DataFrame:
    """``validate_link`` for a link named as the workflow names it (``loopback`` or ``veth<Gbps>``), with the
    config's ``link_sizes`` (three sizes per decade) and ``link_repeats``."""
    rate = None if link == "loopback" else float(link.removeprefix("veth"))
    lo, hi = transfer["link_sizes"]
    return validate_link("loopback" if rate is None else "veth", rate, netlab.sizes_log(lo, hi, 3),
                         transfer["link_repeats"], transfers_csv, model_csv, log=log)
