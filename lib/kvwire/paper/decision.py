"""Which codec to send a cache with, by encoder (CPU or GPU) and link bandwidth, for one quality
floor: the fastest codec whose token agreement meets the floor on every model, where it beats the
raw transfer; computed from the measured speed-up sweeps and the quality table."""

from __future__ import annotations

import pandas as pd

from ..decide import fastest_meeting_floor

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
            speedup = dict(zip(group["codec"], group[MODE]))
            # time relative to the raw transfer's (1): the fastest eligible codec is the highest speed-up
            d = fastest_meeting_floor({c: 1.0 / x for c, x in speedup.items()}, {c: c in codecs for c in speedup}, 1.0)
            rows.append({"encoder": encoder, "bandwidth_gbps": float(bw), "length": int(n), "choice": d.choice,
                         "speedup": float(speedup[d.choice]) if d.choice != "raw" else 1.0,
                         "best_codec": d.best or "none",
                         "best_speedup": float(speedup[d.best]) if d.best else float("nan")})
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


def decision_frame(cpu_sweep: pd.DataFrame, gpu_sweep: pd.DataFrame, quality: pd.DataFrame,
                   floor: float) -> pd.DataFrame:
    """The decision table: ``regimes`` of ``choices`` at ``floor``, the floor in its first column."""
    table = regimes(choices(cpu_sweep, gpu_sweep, quality, floor))
    table.insert(0, "floor", floor)
    return table


def bandwidth_label(gbps: float) -> str:
    return f"{gbps:g}" if gbps < 1000 else f"{gbps / 1000:g}k"

