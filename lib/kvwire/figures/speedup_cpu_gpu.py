"""Speed-up against bandwidth of the same codecs on the CPU and on the GPU."""

from __future__ import annotations

import pandas as pd

from . import register_figure
from .style import note, pyplot, speedup_axes

CAPTION = """End-to-end speed-up over the raw transfer against link bandwidth, sequential and pipelined,
for the codecs timed on both the CPU (dashed, rule transfer_model) and the GPU (solid, rule
break_even_all), per study model at its longest prompt bin. Above 1 the codec pays. Made by rule figure
from transfer_sweep.csv and gpu_transfer_sweep.csv."""


@register_figure("speedup_cpu_gpu", sources=("transfer_sweep", "gpu_transfer_sweep"), caption=CAPTION)
def draw(tables):
    """Speed-up over raw transfer vs bandwidth, the same codecs on the CPU (dashed) and the GPU
    (solid), per study model at its longest prompt bin timed on both, sequential and pipelined."""
    pyplot()  # the Agg backend, before seaborn imports pyplot
    import seaborn as sns

    cpu = tables["transfer_sweep"].rename(columns={"bin": "seq"})
    cpu = cpu.groupby(["model", "seq", "codec", "bandwidth_gbps"], as_index=False)[
        ["speedup_sequential", "speedup_pipelined"]].median().assign(device="CPU")
    gpu = tables["gpu_transfer_sweep"]
    gpu = gpu[gpu["model"].isin(cpu["model"])]
    both = cpu.merge(gpu[["model", "seq", "codec"]].drop_duplicates(), on=["model", "seq", "codec"])
    if both.empty:
        return note("no study model and length is timed on both CPU and GPU")
    seq = both.groupby("model")["seq"].max()
    gpu = gpu.assign(device=gpu["device_name"])
    t = pd.concat([cpu, gpu], ignore_index=True)
    keep = both[["model", "seq", "codec"]].drop_duplicates()
    t = t.merge(keep[keep["seq"] == keep["model"].map(seq)], on=["model", "seq", "codec"])
    long = t.melt(id_vars=["model", "seq", "codec", "device", "bandwidth_gbps"],
                  value_vars=["speedup_sequential", "speedup_pipelined"], var_name="mode", value_name="speedup")
    long["mode"] = long["mode"].str.removeprefix("speedup_")
    long["panel"] = long["model"] + " @ " + long["seq"].astype(str)
    devices = ["CPU"] + sorted(set(long["device"]) - {"CPU"})
    sns.set_theme(style="whitegrid", context="paper")
    grid = sns.relplot(data=long, x="bandwidth_gbps", y="speedup", hue="codec", style="device",
                       style_order=devices, dashes={d: ((4, 2) if d == "CPU" else "") for d in devices},
                       col="panel", row="mode", kind="line", height=3.0, aspect=1.3, errorbar=None,
                       palette="tab20", facet_kws={"sharey": False})
    speedup_axes(grid)
    grid.set_titles("{col_name} tokens, {row_name}")
    return grid.figure
