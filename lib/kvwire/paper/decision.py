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
        return s[s["codec"].isin(codecs) & s["model"].isin(models)]

    cpu_sweep, gpu_sweep = keep(cpu_sweep), keep(gpu_sweep)
    # one prompt length for both encoders: the longest swept for every model on both
    common = _lengths(cpu_sweep, "bin") & _lengths(gpu_sweep, "seq")
    if not common:
        raise ValueError("no prompt length is swept for every model on both the CPU and the GPU")
    n = max(common)
    rows = []
    for encoder, sweep, length in (("CPU", cpu_sweep, "bin"), ("GPU", gpu_sweep, "seq")):
        s = sweep[sweep[length] == n]
        med = s.groupby(["bandwidth_gbps", "codec"])[MODE].median().reset_index()
        for bw, group in med.groupby("bandwidth_gbps"):
            best = group.loc[group[MODE].idxmax()]
            pays = best[MODE] > 1.0
            rows.append({"encoder": encoder, "bandwidth_gbps": float(bw), "length": int(s[length].iloc[0]),
                         "choice": best["codec"] if pays else "raw", "speedup": float(best[MODE]) if pays else 1.0,
                         "best_codec": best["codec"], "best_speedup": float(best[MODE])})
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

