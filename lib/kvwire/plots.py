"""Figures. Plotting only: every number shown was computed by another module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ConfigError
from .io import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, figure, *paths: str | Path) -> None:
    """Write ``figure`` atomically to each path (format from the suffix) and free it."""
    for path in paths:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=Path(path).suffix[1:], dpi=150, bbox_inches="tight")
    plt.close(figure)


def _speedup_axes(grid) -> None:
    """Log-log speed-up against bandwidth, with the break-even line (speed-up 1) dotted."""
    for ax in grid.axes.flat:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(1.0, color="black", lw=0.8, ls=":")
    grid.set_axis_labels("link bandwidth (Gbps)", "speed-up over raw transfer")


def speedup_vs_bandwidth(sweep_csv: str | Path, pdf: str | Path, png: str | Path) -> None:
    """End-to-end speed-up over raw transfer vs link bandwidth, per model, codec and transfer mode."""
    import seaborn as sns

    plt = _pyplot()
    sweep = pd.read_csv(sweep_csv)
    # one curve per (model, codec, mode): average over datasets, largest bin (the longest prompts)
    largest = sweep.groupby("model")["bin"].transform("max")
    sweep = sweep[sweep["bin"] == largest]
    long = sweep.melt(id_vars=["model", "codec", "bandwidth_gbps", "bin"],
                      value_vars=["speedup_sequential", "speedup_pipelined"], var_name="mode", value_name="speedup")
    long["mode"] = long["mode"].str.removeprefix("speedup_")
    sns.set_theme(style="whitegrid", context="paper")
    grid = sns.relplot(data=long, x="bandwidth_gbps", y="speedup", hue="codec", style="mode", col="model",
                       kind="line", marker="o", height=3.2, aspect=1.2, errorbar=None,
                       facet_kws={"sharey": False})
    _speedup_axes(grid)
    grid.set_titles("{col_name}")
    _save(plt, grid.figure, pdf, png)


def codec_errors(codecs_csv: str | Path, pdf: str | Path, png: str | Path) -> None:
    """Compression ratio vs key and value relative MSE, one panel per model, every codec labelled."""
    import seaborn as sns

    plt = _pyplot()
    table = pd.read_csv(codecs_csv)
    long = table.melt(id_vars=["model", "codec", "ratio"], value_vars=["key_rel_mse", "value_rel_mse"],
                      var_name="tensor", value_name="rel_mse")
    long["tensor"] = long["tensor"].str.removesuffix("_rel_mse")
    # lossless codecs have zero error: draw them on the floor of the log axis, labelled as exact
    floor = long.loc[long.rel_mse > 0, "rel_mse"].min() / 10 if (long.rel_mse > 0).any() else 1e-8
    long["shown"] = long["rel_mse"].clip(lower=floor)
    sns.set_theme(style="whitegrid", context="paper")
    grid = sns.relplot(data=long, x="ratio", y="shown", hue="tensor", col="model", kind="scatter",
                       height=3.6, aspect=1.3, facet_kws={"sharey": True, "sharex": False})
    for (model,), ax in zip(((m,) for m in grid.col_names), grid.axes.flat):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(floor, color="grey", lw=0.6, ls=":")
        sub = long[(long.model == model) & (long.tensor == "key")]
        for row in sub.itertuples():
            ax.annotate(row.codec, (row.ratio, row.shown), fontsize=5, xytext=(2, 2), textcoords="offset points")
    grid.set_axis_labels("compression ratio (raw / wire bytes)", "relative MSE (dotted: exact)")
    grid.set_titles("{col_name}")
    _save(plt, grid.figure, pdf, png)


def pareto_steps(ratio, quality) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the staircase through Pareto-optimal points (both axes maximised), in ratio order.

    Between two neighbours the line holds the quality of the one with the larger ratio: the best
    quality reachable at *at least* that ratio, i.e. the edge of the region the front dominates.
    """
    r = np.asarray(ratio, dtype=float)
    q = np.asarray(quality, dtype=float)
    if r.shape != q.shape:
        raise ConfigError(f"pareto_steps: {r.size} ratios but {q.size} qualities")
    order = np.lexsort((-q, r))  # ratio ascending, the better quality first on ties
    r, q = r[order], q[order]
    xs, ys = [], []
    for i in range(r.size):
        if i:
            xs.append(r[i - 1])
            ys.append(q[i])
        xs.append(r[i])
        ys.append(q[i])
    return np.array(xs), np.array(ys)


def _plain_log_ticks(axis) -> None:
    """Log-axis ticks at 1-2-5 written as plain numbers (the default 3x10^0 labels collide)."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(NullFormatter())


def _model_axes(plt, n: int, *, width: float = 3.6, height: float = 3.2, **kw):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False, **kw)
    return fig, axes[0]


def pareto_per_model(by_model_csv: str | Path, pdf: str | Path, png: str | Path) -> None:
    """Compression ratio vs token agreement (95 % paired-bootstrap bars), one panel per model;
    Pareto-optimal codecs highlighted and joined by their staircase."""
    import seaborn as sns

    plt = _pyplot()
    table = pd.read_csv(by_model_csv)
    table["pareto"] = table["pareto"].astype(str).str.lower().eq("true")  # CSV round trip of a bool
    models = sorted(table.model.unique())
    sns.set_theme(style="whitegrid", context="paper")
    front_colour, other_colour = sns.color_palette()[3], "0.55"
    fig, axes = _model_axes(plt, len(models), sharey=True)
    for ax, model in zip(axes, models):
        sub = table[table.model == model]
        for on_front, colour, label in ((False, other_colour, "dominated"), (True, front_colour, "Pareto-optimal")):
            pts = sub[sub.pareto == on_front]
            if pts.empty:
                continue
            # an interval may not contain its mean after rounding; bars cannot be negative
            err = np.vstack([(pts.token_agreement - pts.token_agreement_ci_lo).clip(lower=0),
                             (pts.token_agreement_ci_hi - pts.token_agreement).clip(lower=0)])
            ax.errorbar(pts.ratio, pts.token_agreement, yerr=err, fmt="o", ms=4, color=colour, ecolor=colour,
                        elinewidth=0.8, capsize=2, label=label, zorder=3 if on_front else 2)
        front = sub[sub.pareto]
        if not front.empty:
            xs, ys = pareto_steps(front.ratio, front.token_agreement)
            ax.plot(xs, ys, color=front_colour, lw=1.0, zorder=1)
        for row in sub.itertuples():
            ax.annotate(row.codec, (row.ratio, row.token_agreement), fontsize=5, xytext=(3, 2),
                        textcoords="offset points")
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
        ax.set_title(model)
        ax.set_xlabel("compression ratio (raw / wire bytes)")
    axes[0].set_ylabel("token agreement with identity (95 % CI)")
    axes[0].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    _save(plt, fig, pdf, png)


def cosine_vs_delta_ce(by_model_csv: str | Path, spearman_csv: str | Path, pdf: str | Path,
                       png: str | Path) -> None:
    """Does K/V cosine predict quality? 1 - cosine vs delta cross-entropy per (model, codec), key and
    value panels; each model's legend entry carries its Spearman rho over (codec, prompt) pairs."""
    import seaborn as sns

    plt = _pyplot()
    table = pd.read_csv(by_model_csv)
    rho = pd.read_csv(spearman_csv).set_index("model")
    gaps = pd.concat([1.0 - table.key_cosine, 1.0 - table.value_cosine])
    # identical tensors (and rounding just above cosine 1) have no gap: draw them on a floor
    floor = gaps[gaps > 0].min() / 10 if (gaps > 0).any() else 1e-8
    changed = table.delta_ce.abs()[table.delta_ce != 0]
    linthresh = 10 ** np.floor(np.log10(changed.min())) if not changed.empty else 1e-3
    models = sorted(table.model.unique())
    sns.set_theme(style="whitegrid", context="paper")
    colours = dict(zip(models, sns.color_palette(n_colors=len(models))))
    fig, axes = _model_axes(plt, 2, width=4.0, sharey=True)
    for ax, tensor in zip(axes, ("key", "value")):
        column = f"rho_{tensor}_cosine_vs_delta_ce"
        for model in models:
            sub = table[table.model == model]
            r = rho[column].get(model, np.nan) if column in rho.columns else np.nan
            label = f"{model} (ρ = {r:+.2f})" if np.isfinite(r) else f"{model} (ρ = n/a)"
            ax.scatter((1.0 - sub[f"{tensor}_cosine"]).clip(lower=floor), sub.delta_ce, s=14,
                       color=colours[model], label=label)
        ax.axvline(floor, color="grey", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=linthresh)
        ax.set_title(tensor)
        ax.set_xlabel(f"1 − {tensor} cosine (zeros drawn at {floor:.0e}, dotted)")
        ax.legend(fontsize=6, title="Spearman over prompts", title_fontsize=6)
    axes[0].set_ylabel("Δ cross-entropy vs identity (nats/token)")
    fig.tight_layout()
    _save(plt, fig, pdf, png)


# per metric: True when larger is better (the drop is identity - codec), False when smaller is
SENSITIVITY_METRICS = {"token_agreement": True, "greedy_match": True, "delta_ce": False}


def sensitivity_matrix(by_model: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Codec x model matrix of the drop in ``metric`` versus the model's identity codec.

    Positive means worse than identity. Identity's own row (all zeros) is left out; a codec a model
    did not run is NaN (shown blank), never 0. Rows are sorted by mean drop over models, smallest first.
    """
    if metric not in SENSITIVITY_METRICS:
        raise ConfigError(f"sensitivity metric {metric!r} is not one of {sorted(SENSITIVITY_METRICS)}")
    dup = by_model[by_model.duplicated(["model", "codec"], keep=False)]
    if not dup.empty:
        raise ConfigError(f"several rows for (model, codec) {sorted(set(zip(dup.model, dup.codec)))}")
    drops = []
    for model, sub in by_model.groupby("model", sort=True):
        ident = sub.loc[sub.codec == "identity", metric]
        if ident.empty:
            raise ConfigError(f"model {model!r} has no identity row to measure the drop against")
        diff = ident.iloc[0] - sub[metric] if SENSITIVITY_METRICS[metric] else sub[metric] - ident.iloc[0]
        drops.append(pd.DataFrame({"model": model, "codec": sub.codec, "drop": diff}))
    long = pd.concat(drops, ignore_index=True)
    long = long[long.codec != "identity"]
    matrix = long.pivot(index="codec", columns="model", values="drop")
    order = matrix.mean(axis=1).sort_values(kind="stable").index  # pivot sorted codecs by name: ties stay so
    matrix = matrix.loc[order]
    matrix.columns.name = None
    return matrix


def sensitivity_heatmap(by_model_csv: str | Path, pdf: str | Path, png: str | Path, *,
                        metric: str = "token_agreement") -> None:
    """Heatmap of ``sensitivity_matrix``: which codecs hurt which models, cells annotated."""
    import seaborn as sns

    plt = _pyplot()
    matrix = sensitivity_matrix(pd.read_csv(by_model_csv), metric)
    if matrix.empty:
        raise ConfigError("sensitivity heatmap: no codec besides identity in the table")
    sns.set_theme(style="whitegrid", context="paper")
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * matrix.shape[1], 1.2 + 0.28 * matrix.shape[0]))
    label = {"token_agreement": "drop in token agreement vs identity",
             "greedy_match": "drop in greedy match vs identity",
             "delta_ce": "Δ cross-entropy vs identity (nats/token)"}[metric]
    sns.heatmap(matrix, ax=ax, annot=True, fmt=".3f", annot_kws={"fontsize": 6}, cmap="vlag", center=0.0,
                linewidths=0.5, linecolor="white", cbar_kws={"label": label})  # NaN cells stay blank
    ax.grid(False)  # the style's grid would show through the blank (missing) cells
    ax.set_xlabel("model")
    ax.set_ylabel("codec (mean drop, smallest first)")
    ax.tick_params(labelsize=6)
    ax.tick_params(axis="y", labelrotation=0)
    _save(plt, fig, pdf, png)


def gpu_kernel_throughput(summary_csv: str | Path, pdf: str | Path, png: str | Path) -> None:
    """Fraction of each GPU's measured copy bandwidth per codec (median over shapes >= 64 MB, bars for
    min..max), encode and decode side by side; one colour per GPU, so GPUs compare codec by codec."""
    import seaborn as sns

    plt = _pyplot()
    t = pd.read_csv(summary_csv).sort_values(["codec", "op", "gpu"])
    sns.set_theme(style="whitegrid", context="paper")
    ops = ["encode", "decode"]
    codecs = sorted(t.codec.unique())
    gpus = sorted(t.gpu.unique())
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 0.45 * len(codecs) * 2), 3.6), sharey=True)
    width = 0.8 / max(len(gpus), 1)
    palette = sns.color_palette("deep", len(gpus))
    for ax, op in zip(axes, ops):
        for j, gpu in enumerate(gpus):
            sub = t[(t.op == op) & (t.gpu == gpu)].set_index("codec").reindex(codecs)
            x = np.arange(len(codecs)) + (j - (len(gpus) - 1) / 2) * width
            err = np.vstack([sub.frac_copy_median - sub.frac_copy_min, sub.frac_copy_max - sub.frac_copy_median])
            ax.bar(x, sub.frac_copy_median, width, yerr=err, capsize=2, color=palette[j],
                   label=f"{gpu} (copy {sub.copy_gbps.dropna().iloc[0]:.0f} GB/s)" if sub.copy_gbps.notna().any()
                   else gpu)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.axhline(0.8, color="black", lw=0.8, ls=":")
        ax.set_xticks(np.arange(len(codecs)), codecs, rotation=60, ha="right")
        ax.set_title(op)
        ax.set_ylim(0, 1.1)
    axes[0].set_ylabel("fraction of device copy bandwidth")
    axes[1].legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    _save(plt, fig, pdf, png)


def break_even_shift(shift_csv: str | Path, pdf: str | Path, png: str | Path) -> None:
    """Break-even bandwidth of each codec on the CPU and on the GPU (pipelined and sequential), per
    model and prompt length: how far a GPU codec moves the line below which compression pays."""
    import seaborn as sns

    plt = _pyplot()
    t = pd.read_csv(shift_csv)
    if t.empty:  # no study model has a GPU-timed shape (e.g. the smoke study's tiny model): say so
        fig, ax = plt.subplots(figsize=(5, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no study model matches a GPU-timed cache shape", ha="center", va="center")
        _save(plt, fig, pdf, png)
        return
    long = pd.concat([
        t.assign(device="CPU", mode=mode, gbps=t[f"cpu_gbps_{mode}"]) for mode in ("sequential", "pipelined")
    ] + [
        t.assign(device=t["gpu"], mode=mode, gbps=t[f"gpu_gbps_{mode}"]) for mode in ("sequential", "pipelined")
    ], ignore_index=True)
    long = long[long["bin"] == long.groupby("model")["bin"].transform("max")]  # the table has every bin
    long["case"] = long["codec"] + " @ " + long["bin"].astype(str)
    sns.set_theme(style="whitegrid", context="paper")
    grid = sns.catplot(data=long, x="case", y="gbps", hue="device", col="model", row="mode", kind="bar",
                       height=2.8, aspect=1.6, sharex=False, errorbar=None)
    for ax in grid.axes.flat:
        ax.set_yscale("log")
    for ax in grid.axes[-1]:
        for label in ax.get_xticklabels():
            label.set_rotation(40)
            label.set_ha("right")
    for ax in grid.axes[:-1].flat:  # the rows share their cases: labels only under the last row
        ax.set_xticklabels([])
        ax.set_xlabel("")
    grid.set_axis_labels("codec @ prompt tokens", "break-even bandwidth (Gbps)")
    grid.set_titles("{col_name}, {row_name}")
    _save(plt, grid.figure, pdf, png)


def speedup_cpu_gpu(cpu_sweep_csv: str | Path, gpu_sweep_csv: str | Path, pdf: str | Path,
                    png: str | Path) -> None:
    """Speed-up over raw transfer vs bandwidth, the same codecs on the CPU (dashed) and the GPU
    (solid), per study model at its longest prompt bin timed on both, sequential and pipelined."""
    import seaborn as sns

    plt = _pyplot()
    cpu = pd.read_csv(cpu_sweep_csv).rename(columns={"bin": "seq"})
    cpu = cpu.groupby(["model", "seq", "codec", "bandwidth_gbps"], as_index=False)[
        ["speedup_sequential", "speedup_pipelined"]].median().assign(device="CPU")
    gpu = pd.read_csv(gpu_sweep_csv)
    gpu = gpu[gpu["model"].isin(cpu["model"])]
    both = cpu.merge(gpu[["model", "seq", "codec"]].drop_duplicates(), on=["model", "seq", "codec"])
    if both.empty:
        fig, ax = plt.subplots(figsize=(5, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no study model and length is timed on both CPU and GPU", ha="center", va="center")
        _save(plt, fig, pdf, png)
        return
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
    _speedup_axes(grid)
    grid.set_titles("{col_name} tokens, {row_name}")
    _save(plt, grid.figure, pdf, png)


def e2e_model_vs_measured(summary_csv: str | Path, pdf: str | Path, png: str | Path) -> None:
    """Measured end-to-end seconds against the transfer model's, per codec, sequential and pipelined."""
    import seaborn as sns

    plt = _pyplot()
    t = pd.read_csv(summary_csv)
    sns.set_theme(style="whitegrid", context="paper")
    grid = sns.relplot(data=t, x="model_s", y="measured_s", hue="codec", style="mode", col="rate_gbps",
                       row="model", height=3.2, aspect=1.1, s=40)
    for ax in grid.axes.flat:
        lo = min(t.model_s.min(), t.measured_s.min()) * 0.8
        hi = max(t.model_s.max(), t.measured_s.max()) * 1.2
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
    grid.set_axis_labels("model (s)", "measured (s)")
    grid.set_titles("{row_name}, {col_name} Gbps")
    _save(plt, grid.figure, pdf, png)
