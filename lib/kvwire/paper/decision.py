"""Which codec to send a cache with, by encoder (CPU or GPU) and link bandwidth, for one quality
floor: the fastest codec whose token agreement meets the floor on every model, where it beats the
raw transfer; computed from the measured speed-up sweeps and the quality table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..io import write_csv

MODE = "speedup_pipelined"


def eligible_codecs(quality: pd.DataFrame, floor: float) -> list[str]:
    """Codecs whose mean token agreement is at least ``floor`` on every model (identity is the raw
    transfer itself)."""
    worst = quality.groupby("codec")["token_agreement"].min()
    n_models = quality.groupby("codec")["model"].nunique()
    all_models = quality["model"].nunique()
    ok = worst[(worst >= floor) & (n_models == all_models)].index
    return sorted(c for c in ok if c != "identity")


def _lengths(sweep: pd.DataFrame, length: str) -> set[int]:
    per_model = sweep.groupby("model")[length].apply(lambda s: set(map(int, s)))
    return set.intersection(*per_model) if len(per_model) else set()


def choices(cpu_sweep: pd.DataFrame, gpu_sweep: pd.DataFrame, quality: pd.DataFrame, floor: float) -> pd.DataFrame:
    """Per (encoder, bandwidth): the codec with the highest median speed-up over models among the
    eligible ones, or ``raw`` when none beats sending the cache uncompressed."""
    codecs = eligible_codecs(quality, floor)
    models = set(quality["model"])  # the GPU sweep also covers shapes the study did not score

    def keep(s):
        return s[s["model"].isin(models)]

    cpu_sweep, gpu_sweep = keep(cpu_sweep), keep(gpu_sweep)
    sweeps = {e: (sw, col) for e, sw, col in (("CPU", cpu_sweep, "bin"), ("GPU", gpu_sweep, "seq")) if not sw.empty}
    if not sweeps:
        raise ValueError("no sweep covers the scored models")
    lengths = {e: _lengths(sw, col) for e, (sw, col) in sweeps.items()}
    # one prompt length for both encoders where they share one (the longest), else each its longest
    common = set.intersection(*lengths.values())
    rows = []
    for encoder, (sweep, length) in sweeps.items():
        if not (common or lengths[encoder]):
            continue  # this encoder timed no length for every model
        n = max(common or lengths[encoder])
        s = sweep[sweep[length] == n]
        med = s.groupby(["bandwidth_gbps", "codec"])[MODE].median().reset_index()
        for bw, group in med.groupby("bandwidth_gbps"):
            group = group[group["codec"].isin(codecs)]  # none eligible: send raw
            best = group.loc[group[MODE].idxmax()] if len(group) else None
            pays = best is not None and best[MODE] > 1.0
            rows.append({"encoder": encoder, "bandwidth_gbps": float(bw), "length": int(n),
                         "choice": best["codec"] if pays else "raw", "speedup": float(best[MODE]) if pays else 1.0,
                         "best_codec": best["codec"] if best is not None else "none",
                         "best_speedup": float(best[MODE]) if best is not None else float("nan")})
    if not rows:
        raise ValueError("no encoder timed one prompt length for every scored model")
    return pd.DataFrame(rows)


def regimes(table: pd.DataFrame) -> pd.DataFrame:
    """Contiguous bandwidth ranges with the same choice, per encoder: [from, to) in Gbps (the bounds
    are the sweep's grid points; the exact switch lies between two of them)."""
    out = []
    for encoder, t in table.sort_values("bandwidth_gbps").groupby("encoder", sort=False):
        run = None
        for r in t.itertuples():
            if run and run["choice"] == r.choice:
                run["to_gbps"] = r.bandwidth_gbps
                run["speedup_max"] = max(run["speedup_max"], r.speedup)
                continue
            if run:
                out.append(run)
            run = {"encoder": encoder, "length": r.length, "choice": r.choice, "from_gbps": r.bandwidth_gbps,
                   "to_gbps": r.bandwidth_gbps, "speedup_max": r.speedup}
        out.append(run)
    frame = pd.DataFrame(out)
    frame["speedup_max"] = frame["speedup_max"].astype(float).round(6)
    return frame


def decision_table(cpu_sweep_csv: str | Path, gpu_sweep_csv: str | Path, quality_csv: str | Path, floor: float,
                   out_csv: str | Path) -> pd.DataFrame:
    table = regimes(choices(pd.read_csv(cpu_sweep_csv), pd.read_csv(gpu_sweep_csv), pd.read_csv(quality_csv),
                            floor))
    table.insert(0, "floor", floor)
    write_csv(out_csv, table)
    return table


def bandwidth_label(gbps: float) -> str:
    return f"{gbps:g}" if gbps < 1000 else f"{gbps / 1000:g}k"

