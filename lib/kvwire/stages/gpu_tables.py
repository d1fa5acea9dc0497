"""Stage: summaries of the cached GPU timing tables (``results/timing/gpu/<gpu>.csv``, measured on lent
GPUs by the rule ``time_gpu``): kernel throughput per (GPU, codec, op), and break-even bandwidths per
(GPU, model shape, sequence length, dtype, codec) from the measured kernel times.

The GPU kernels encode a whole cache in one launch, so a per-layer time does not exist; the
pipelined break-even splits the cache's time and payload over its layers in proportion to the tokens
each keeps -- evenly where all layers have one shape -- and says so in its ``per_layer_time`` column.
A codec with a host stage (CacheGen's CPU rANS) adds the host time to the device time.

Sliding-window shapes (``kvwire.windows.BENCH_LAYOUTS``: Gemma-3) send only ``min(seq, window - 1)``
tokens of a sliding layer (``kvwire.windows.kept_tokens``, as extraction keeps them): raw bytes count
those. Timing rows taken on that cache (``layer_tokens`` says what was timed, ``kvwire.kernels.bench``)
are used as they are; rows timed before the trimming, on the whole prefix of every layer, have their
times and payload scaled linearly to the kept tokens (the bytes the kernels would process; kernels
at these sizes are not purely bandwidth-bound, so that is an estimate) and say so in
``per_layer_time``, with ``timed_raw_bytes`` the bytes that were timed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..errors import KVError
from ..io import write_csv
from ..transfer import CodecCost, break_even_gbps
from ..windows import bench_layout, kept_tokens

LARGE_BYTES = 64 * 2**20  # issue 5's "at >= 64 MB of KV"
SHAPE = ["gpu", "model", "layers", "kv_heads", "seq", "head_dim", "dtype", "codec"]


def read_gpu_tables(paths: Sequence[str | Path]) -> pd.DataFrame:
    """The GPU timing tables, concatenated; a table from before the ``conformant`` column counts its
    ``identical_to_cpu`` as conformance."""
    if not paths:
        raise KVError("no GPU timing tables (results/timing/gpu/*.csv): run the rule time_gpu on a GPU node")
    frames = []
    for p in paths:
        t = pd.read_csv(p)
        if "conformant" not in t.columns:
            t["conformant"] = pd.NA
        if "run" in t.columns or "checked_layers" in t.columns:  # rows merged from runs before the column
            old = t["checked_layers"].isna() & t["conformant"].isna() if "checked_layers" in t.columns else True
            t.loc[old, "conformant"] = t.loc[old, "identical_to_cpu"]
        else:
            t["conformant"] = t["identical_to_cpu"]
        # rows timed on a real cache name its file (kvwire.kernels.bench.time_record); older rows are synthetic
        t["cache"] = t["cache"].fillna("synthetic") if "cache" in t.columns else "synthetic"
        frames.append(t)
    return pd.concat(frames, ignore_index=True)


def kernel_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (GPU, codec, op), over the shapes with at least 64 MB of KV: fraction of copy bandwidth
    (median, min, max), median GB/s, speed-up over eager (median, min), and conformance; and the
    fraction of copy bandwidth over the smaller shapes (``frac_copy_small_*``: the study's own caches
    of a few MB, where launch and tail costs weigh; NaN where none was timed), there also replayed from
    CUDA graphs (``frac_copy_small_graph_*``, ``kernels.graph``) and the host's µs per call of each
    (``host_us_small_median``, ``host_us_small_graph_median``: NaN in tables from before those rows)."""
    small = table[(table.impl == "triton") & (table.raw_bytes < LARGE_BYTES)]
    small_graph = table[(table.impl == "graph") & (table.raw_bytes < LARGE_BYTES)]
    host = table["host_us"] if "host_us" in table.columns else pd.Series(float("nan"), index=table.index)
    dev = table[(table.impl == "triton") & (table.raw_bytes >= LARGE_BYTES)]
    eager = table[(table.impl == "eager") & (table.raw_bytes >= LARGE_BYTES)]
    rows = []
    # every (GPU, codec, op) timed at any size: a GPU timed only on the study's sizes has NaN large-cache columns
    for (gpu, codec, op), every in table[table.impl == "triton"].groupby(["gpu", "codec", "op"], sort=True):
        g = dev[(dev.gpu == gpu) & (dev.codec == codec) & (dev.op == op)]
        e = eager[(eager.gpu == gpu) & (eager.codec == codec) & (eager.op == op)]
        rows.append({
            "gpu": gpu, "copy_gbps": (g if len(g) else every).copy_gbps.iloc[0], "codec": codec, "op": op,
            "shapes": len(g),
            "frac_copy_median": g.frac_copy.median(), "frac_copy_min": g.frac_copy.min(),
            "frac_copy_max": g.frac_copy.max(), "gbps_median": g.gbps.median(),
            "speedup_vs_eager_median": g.speedup_vs_eager.median(), "speedup_vs_eager_min": g.speedup_vs_eager.min(),
            "eager_gbps_median": e.gbps.median() if len(e) else float("nan"),
            # empty = not checked at that size (a kernel that is not byte-exact, on layers too large for
            # the CPU codec); every checked shape must conform
            "conformant": bool(_checked(every.conformant).all()),
            "unchecked_shapes": int(g.conformant.isna().sum()),
            "ratio_median": g.ratio.median(),
        })
        sm = small[(small.gpu == gpu) & (small.codec == codec) & (small.op == op)]
        sg = small_graph[(small_graph.gpu == gpu) & (small_graph.codec == codec) & (small_graph.op == op)]
        rows[-1].update(small_shapes=len(sm), frac_copy_small_median=sm.frac_copy.median(),
                        frac_copy_small_min=sm.frac_copy.min(), frac_copy_small_max=sm.frac_copy.max(),
                        host_us_small_median=host[sm.index].median(),
                        frac_copy_small_graph_median=sg.frac_copy.median(), frac_copy_small_graph_min=sg.frac_copy.min(),
                        host_us_small_graph_median=host[sg.index].median())
    return pd.DataFrame(rows)


def _checked(col: pd.Series) -> pd.Series:
    return col.dropna().map(lambda v: v if isinstance(v, bool) else str(v) == "True")


def sent_tokens(model: str, layers: int, seq: int) -> list[int]:
    """Per layer, the tokens a ``seq``-token cache of GPU bench shape ``model`` sends (sliding layers:
    ``min(seq, window - 1)``, ``kvwire.windows``)."""
    types, window = bench_layout(str(model), int(layers))
    return kept_tokens(types, window, int(seq), n_layers=int(layers))


def timed_tokens(described, layers: int, seq: int) -> int:
    """Tokens over all layers of the cache a timing row was taken on: its ``layer_tokens``
    (``15x511+3x2048``) or, in rows from before that column, ``seq`` on every layer."""
    if described is None or (isinstance(described, float) and math.isnan(described)) or described == "":
        return int(layers) * int(seq)
    total = 0
    for part in str(described).split("+"):
        count, _, tokens = part.partition("x")
        total += int(count) * int(tokens)
    return total


def break_even(table: pd.DataFrame) -> pd.DataFrame:
    """Break-even bandwidth (Gbps) of every timed (GPU, shape, dtype, codec): sequential and
    pipelined, from the device times -- per op the faster of the plain call and its CUDA-graph replay
    (``encode_call`` / ``decode_call`` say which; a sender reusing its buffers replays) -- plus a host
    stage's, where there is one, for the tokens the shape's cache sends (module docstring)."""
    rows = []
    timed = table[table.impl.isin(["triton", "graph", "host"])]
    for key, g in timed.groupby(SHAPE, sort=True):
        device = g[g.impl != "host"].sort_values(["op", "ms", "impl"], kind="stable").drop_duplicates("op")
        ms = pd.concat([device, g[g.impl == "host"]]).groupby("op")["ms"].sum()  # + host where a host stage exists
        call = {r.op: "graph" if r.impl == "graph" else "plain" for r in device.itertuples()}
        if not {"encode", "decode"} <= set(ms.index):
            continue
        base = dict(zip(SHAPE, key))
        n, seq = int(base["layers"]), int(base["seq"])
        raw, pay = int(g.raw_bytes.iloc[0]), int(g.payload_bytes.iloc[0])
        enc, dec = float(ms["encode"]), float(ms["decode"])
        tokens = sent_tokens(base["model"], n, seq)
        had = timed_tokens(g["layer_tokens"].iloc[0] if "layer_tokens" in g else None, n, seq)
        how = "cache time / layers" if len(set(tokens)) == 1 else "cache time split by layer tokens"
        timed_raw = raw
        if had != sum(tokens):  # timed on more (or other) tokens than the cache sends: scale to what it sends
            f = sum(tokens) / had
            raw, pay, enc, dec = round(raw * f), pay * f, enc * f, dec * f
            how += f"; timed on {had} layer-tokens, scaled to the {sum(tokens)} kept"
        cost = CodecCost.uniform(raw, pay, enc / 1e3, dec / 1e3, tokens)
        rows.append({**base, "raw_bytes": raw, "wire_bytes": pay, "ratio": raw / pay,
                     "encode_ms": enc, "decode_ms": dec,
                     "host_stage": bool((g.impl == "host").any()), "per_layer_time": how,
                     "encode_call": call.get("encode", ""), "decode_call": call.get("decode", ""),
                     "timed_raw_bytes": timed_raw,
                     "break_even_gbps_sequential": break_even_gbps(cost, "sequential"),
                     "break_even_gbps_pipelined": break_even_gbps(cost, "pipelined")})
    return pd.DataFrame(rows)


def gpu_tables(paths: Sequence[str | Path], summary_csv: str | Path, break_even_csv: str | Path) -> None:
    table = read_gpu_tables(paths)
    # the shapes' summaries and break-evens are the synthetic caches' (every model shape and length);
    # rows timed on real caches are compared with them apart
    table = table[table["cache"] == "synthetic"]
    write_csv(summary_csv, kernel_summary(table))
    write_csv(break_even_csv, break_even(table))


def server_cpu_rows(scaling: pd.DataFrame) -> pd.DataFrame:
    """The whole-server CPU side of a CPU-vs-GPU comparison: per (model, seq, codec) the ``fastest``
    thread count of the ``cpu_scaling`` table (the pass timer's row where the case has one), with the
    break-even solved from its whole-cache times split evenly over the layers (its table has no
    per-layer times; the sequential break-even needs none)."""
    if scaling.empty:
        return scaling
    timer = scaling["timer"] if "timer" in scaling.columns else pd.Series("layer", index=scaling.index)
    fastest = scaling[scaling["fastest"].astype(bool)].assign(timer=timer, _layer_timer=timer != "pass")
    # per case, the pass timer's row where one exists (the study's timer), else the older per-layer one
    fastest = fastest.sort_values("_layer_timer", kind="stable").drop_duplicates(["model", "seq", "codec"])
    rows = []
    for _, r in fastest.iterrows():
        best = r["timer"]
        n = int(r["layers"])
        cost = CodecCost.uniform(int(r["raw_bytes"]), float(r["wire_bytes"]), float(r["encode_s"]),
                                 float(r["decode_s"]), [1] * n)
        rows.append({"model": r["model"], "bin": int(r["seq"]), "codec": r["codec"],
                     "server_cpu": f"{int(r['threads'])} of {int(r['logical_cpus'])} threads, {r['device_name']}",
                     "server_cpu_name": r["device_name"], "server_logical_cpus": int(r["logical_cpus"]),
                     "server_threads": int(r["threads"]), "server_timer": best,
                     "server_gbps_sequential": break_even_gbps(cost, "sequential"),
                     "server_gbps_pipelined": break_even_gbps(cost, "pipelined"),
                     "server_codec_ms": (float(r["encode_s"]) + float(r["decode_s"])) * 1e3})
    return pd.DataFrame(rows)


def break_even_shift(cpu_break_even: pd.DataFrame, models: pd.DataFrame, gpu_break_even: pd.DataFrame,
                     scaling: pd.DataFrame | None = None) -> pd.DataFrame:
    """The same codec on the same cache shape and length, CPU against GPU: break-even Gbps of each
    (sequential and pipelined) and the factor the GPU moves it by. The study's models are matched
    to the GPU table's shapes by (layers, kv_heads, head_dim); CPU rows are the median over datasets,
    GPU rows bf16 (the study's cache dtype). With ``scaling`` (the ``cpu_scaling`` table) each case
    timed on a whole server CPU also gets that CPU's break-even (``server_*``, its fastest thread
    count named) and the GPU's factor over it (``shift_server_*``): the comparison the paper leads with."""
    shapes = {(int(r.num_layers), int(r.num_kv_heads), int(r.head_dim)): r["name"] for _, r in models.iterrows()}
    gpu = gpu_break_even[gpu_break_even["dtype"] == "bfloat16"].copy()
    gpu["study_model"] = [shapes.get((int(a), int(b), int(c))) for a, b, c in
                          zip(gpu.layers, gpu.kv_heads, gpu.head_dim)]
    gpu = gpu.dropna(subset=["study_model"]).rename(columns={"model": "gpu_shape"})
    cpu = (cpu_break_even.groupby(["model", "bin", "codec"], as_index=False)
           [["break_even_gbps_sequential", "break_even_gbps_pipelined", "encode_s", "decode_s"]].median())
    merged = cpu.merge(gpu, left_on=["model", "bin", "codec"], right_on=["study_model", "seq", "codec"],
                       suffixes=("_cpu", "_gpu"))
    out = merged[["model", "bin", "codec", "gpu"]].copy()
    for mode in ("sequential", "pipelined"):
        c, g = merged[f"break_even_gbps_{mode}_cpu"], merged[f"break_even_gbps_{mode}_gpu"]
        out[f"cpu_gbps_{mode}"], out[f"gpu_gbps_{mode}"], out[f"shift_{mode}"] = c, g, g / c
    out["cpu_codec_ms"] = (merged["encode_s"] + merged["decode_s"]) * 1e3
    out["gpu_codec_ms"] = merged["encode_ms"] + merged["decode_ms"]
    server = server_cpu_rows(scaling) if scaling is not None else pd.DataFrame()
    if not server.empty:
        out = out.merge(server, on=["model", "bin", "codec"], how="left")
        for mode in ("sequential", "pipelined"):
            out[f"shift_server_{mode}"] = out[f"gpu_gbps_{mode}"] / out[f"server_gbps_{mode}"]
    return out.sort_values(["model", "bin", "codec"]).reset_index(drop=True)


def break_even_shift_table(cpu_csv: str | Path, models_csv: str | Path, gpu_csv: str | Path,
                           out_csv: str | Path, scaling_csv: str | Path | None = None) -> pd.DataFrame:
    scaling = pd.read_csv(scaling_csv) if scaling_csv else None
    table = break_even_shift(pd.read_csv(cpu_csv), pd.read_csv(models_csv), pd.read_csv(gpu_csv), scaling)
    write_csv(out_csv, table)
    return table


def real_vs_synthetic(table: pd.DataFrame) -> pd.DataFrame:
    """Every kernel row timed on a real cache beside the synthetic cache of the same shape timed in the
    same tables (same GPU): times, ratios and their quotients, and whether each conformed. Real rows
    without a synthetic twin are kept with NaN there. Rows are matched on the shape (layers, heads,
    head_dim, seq, dtype), codec, implementation and op: the real cache's model name is the study's."""
    if "cache" not in table.columns:
        table = table.assign(cache="synthetic")
    dev = table[table.impl.isin(["triton", "host"])]
    real, syn = dev[dev["cache"] != "synthetic"], dev[dev["cache"] == "synthetic"]
    if not len(real):
        raise KVError("no GPU rows timed on a real cache (bench/gpu_codecs.py --time-kv)")
    key = ["gpu", "layers", "kv_heads", "head_dim", "seq", "dtype", "codec", "impl", "op"]
    syn = syn.drop_duplicates(key, keep="last")[key + ["model", "ms", "ratio", "conformant"]]
    m = real[key + ["model", "cache", "layer_tokens", "ms", "ratio", "payload_bytes", "conformant"]].merge(
        syn, on=key, how="left", suffixes=("", "_synthetic"))
    m = m.rename(columns={"model_synthetic": "synthetic_shape"})
    m["time_real_over_synthetic"] = m["ms"] / m["ms_synthetic"]
    m["ratio_real_over_synthetic"] = m["ratio"] / m["ratio_synthetic"]
    return m.sort_values(["gpu", "model", "codec", "impl", "op"], kind="stable").reset_index(drop=True)


def gpu_real_caches(paths: Sequence[str | Path], out_csv: str | Path) -> pd.DataFrame:
    table = real_vs_synthetic(read_gpu_tables(paths))
    write_csv(out_csv, table)
    return table
