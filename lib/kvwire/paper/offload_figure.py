"""The offload figures: per-token latency against context (replay solid, simulation dashed), and
what the pool does (hit rate, stall share) per mode."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..plots import _pyplot, _save

MODES = ["all_gpu", "reactive", "predictive", "predictive_int8"]


def _table(csv: str | Path) -> pd.DataFrame:
    t = pd.read_csv(csv)
    if t.empty or "kind" not in t:
        raise ValueError(f"{csv} has no offload rows")
    return t


def offload_latency(table_csv: str | Path, pdf: str | Path, png: str | Path) -> None:
    t = _table(table_csv)
    plt = _pyplot()
    models = sorted(t["model"].unique())
    fig, axes = plt.subplots(2, len(models), figsize=(3.8 * len(models), 5.6), sharex="col", squeeze=False)
    colors = dict(zip(MODES, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for j, model in enumerate(models):
        for i, (col, label) in enumerate((("tpot_p50_ms", "TPOT p50 (ms)"), ("ttft_ms", "TTFT from host KV (ms)"))):
            ax = axes[i, j]
            for mode in MODES:
                for kind, style in (("replay", "-o"), ("simulation", "--")):
                    sub = t[(t["model"] == model) & (t["mode"] == mode) & (t["kind"] == kind)].sort_values("context")
                    if not sub.empty:
                        ax.plot(sub["context"], sub[col], style, color=colors[mode], ms=4,
                                label=f"{mode} ({'GPU replay' if kind == 'replay' else 'simulation'})")
            ax.set_xscale("log", base=2)
            ax.set_ylabel(label if j == 0 else "")
            if i == 0:
                ax.set_title(model)
            else:
                ax.set_xlabel("context (tokens)")
    handles, labels = axes[0, -1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.subplots_adjust(bottom=0.2)
    _save(plt, fig, pdf, png)


def offload_pool(table_csv: str | Path, pdf: str | Path, png: str | Path) -> None:
    t = _table(table_csv)
    t = t[(t["kind"] == "replay") & (t["mode"] != "all_gpu")]
    if t.empty:
        raise ValueError(f"{table_csv} has no replay rows of an offload mode")
    plt = _pyplot()
    models = sorted(t["model"].unique())
    fig, axes = plt.subplots(2, len(models), figsize=(3.8 * len(models), 5.2), sharex="col", squeeze=False)
    colors = dict(zip(MODES, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for j, model in enumerate(models):
        for i, (col, label) in enumerate((("hit_rate", "pool hit rate"), ("stall_pct", "stall vs all-GPU (%)"))):
            ax = axes[i, j]
            for mode in MODES[1:]:
                sub = t[(t["model"] == model) & (t["mode"] == mode)].sort_values("context")
                if not sub.empty:
                    ax.plot(sub["context"], sub[col], "-o", color=colors[mode], ms=4, label=mode)
            ax.set_xscale("log", base=2)
            ax.set_ylabel(label if j == 0 else "")
            if i == 0:
                ax.set_title(model)
            else:
                ax.set_xlabel("context (tokens)")
    axes[0, -1].legend(fontsize=7)
    _save(plt, fig, pdf, png)
