"""Stage: the analytical transfer model over the configured bandwidths, and break-even per codec.

A codec that reads attention statistics (``prefill_stats_s`` > 0 in its timing table) is solved twice:
as the prefill computed them for free (the main columns) and with their measured cost charged to
its encode before the first layer (``*_with_stats``), so a table never hides what selection costs.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..io import write_csv
from ..transfer import break_even_gbps, cost_from_arrays, sweep

KEYS = ["model", "dataset", "bin", "codec", "device", "device_name", "threads", "timer"]  # threads, timer: the CPU side, named


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
        stats_s = float(group["prefill_stats_s"].iloc[0]) if "prefill_stats_s" in group.columns else 0.0
        charged = cost_from_arrays(cost.raw_bytes, cost.wire_bytes,
                                   [cost.encode_s[0] + stats_s, *cost.encode_s[1:]], cost.decode_s)
        be_rows.append({**base, "raw_bytes": cost.raw_bytes, "wire_bytes": cost.total_wire_bytes,
                        "ratio": cost.ratio, "encode_s": sum(cost.encode_s), "decode_s": sum(cost.decode_s),
                        "break_even_gbps_sequential": break_even_gbps(cost, "sequential"),
                        "break_even_gbps_pipelined": break_even_gbps(cost, "pipelined"),
                        "prefill_stats_s": stats_s,
                        "break_even_gbps_sequential_with_stats": break_even_gbps(charged, "sequential"),
                        "break_even_gbps_pipelined_with_stats": break_even_gbps(charged, "pipelined")})
    sweep_df, be_df = pd.DataFrame(sweep_rows), pd.DataFrame(be_rows)
    write_csv(sweep_csv, sweep_df)
    write_csv(break_even_csv, be_df)
    return sweep_df, be_df
