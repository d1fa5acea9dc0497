"""Stage: the analytical transfer model over the configured bandwidths, and break-even per codec."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..io import write_csv
from ..transfer import break_even_gbps, cost_from_arrays, sweep

KEYS = ["model", "dataset", "bin", "codec", "device", "device_name", "threads"]  # threads: the CPU's, named


def model_transfer(timing_csvs: list[str | Path], sweep_csv: str | Path, break_even_csv: str | Path, *,
                   bandwidths_gbps: list[float], latency_us: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    timing = pd.concat([pd.read_csv(p) for p in timing_csvs], ignore_index=True)
    keys = [k for k in KEYS if k in timing.columns]  # timing tables before the threads column lack it
    sweep_rows, be_rows = [], []
    for key, group in timing.groupby(keys, sort=True):
        group = group.sort_values("layer")
        cost = cost_from_arrays(group["layer_raw_bytes"].sum(), group["wire_bytes"], group["encode_s"],
                                group["decode_s"])
        base = dict(zip(keys, key))
        for row in sweep(cost, bandwidths_gbps, latency_us * 1e-6):
            sweep_rows.append({**base, "ratio": cost.ratio, **row})
        be_rows.append({**base, "raw_bytes": cost.raw_bytes, "wire_bytes": cost.total_wire_bytes,
                        "ratio": cost.ratio, "encode_s": sum(cost.encode_s), "decode_s": sum(cost.decode_s),
                        "break_even_gbps_sequential": break_even_gbps(cost, "sequential"),
                        "break_even_gbps_pipelined": break_even_gbps(cost, "pipelined")})
    sweep_df, be_df = pd.DataFrame(sweep_rows), pd.DataFrame(be_rows)
    write_csv(sweep_csv, sweep_df)
    write_csv(break_even_csv, be_df)
    return sweep_df, be_df
