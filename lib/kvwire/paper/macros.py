"""The macro file: every number the paper's text quotes, as a LaTeX command computed from a cached
table. A table that is missing turns its macros into a visible "no data" mark and sets
``\\kwHave<Table>`` to 0, so the text can say so instead of printing a stale number."""

from __future__ import annotations

import math
import re
from typing import Callable, Mapping

import pandas as pd

from ..errors import KvwireError

DIGITS = ["Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine"]
TABLES = ["quality", "quality_by_bin", "quality_pairs", "gates", "cosine_spearman", "models", "sensitivity", "break_even_all", "break_even_shift", "gpu_kernels",
          "gpu_real_caches",
          "e2e_transfer", "link_model", "decision", "router", "offload",
          # config/qwen1.5b.yaml's run (four models, fewer codecs), published apart: its largest model's rows
          "qwen1.5b/quality", "qwen1.5b/quality_pairs"]


def macro_name(*parts: str) -> str:
    """``kw`` + CamelCase of the parts, digits spelled out (LaTeX command names are letters only):
    ("ratio", "int8_channel", "smollm2-135m") -> kwRatioIntEightChannelSmollm."""
    out = "kw"
    for part in parts:
        part = re.sub(r"-\d+[mbk]?$", "", str(part))  # model size suffixes: smollm2-135m -> smollm2
        for word in re.split(r"[^A-Za-z0-9]+", part):
            for token in re.findall(r"[A-Za-z]+|\d", word):
                out += DIGITS[int(token)] if token.isdigit() else token[0].upper() + token[1:]
    return out


def num(x: float, digits: int = 3) -> str:
    """A measured number, rounded to ``digits`` significant digits, LaTeX-safe."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        raise ValueError("NaN where a number was expected")
    if x == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(x)))
    decimals = max(digits - 1 - magnitude, 0)
    text = f"{round(x, decimals):.{decimals}f}"
    return text


def pct(x: float, digits: int = 2) -> str:
    return num(100 * x, digits) + r"\,\%"


def and_list(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c`` (the sentences list bins, gates ...)."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def tt(name: str) -> str:
    return r"\texttt{" + str(name).replace("_", r"\_") + "}"


# The tables a section reads: any mapping of table name -> DataFrame (``stages.paper.CsvTables`` reads
# published CSVs on first use); a table that is absent is simply not in it.
Tables = Mapping[str, pd.DataFrame]


# ---------------------------------------------------------------- one function per table

def _quality(t: Tables, floor: float) -> dict[str, str]:
    q = t["quality"]
    m = {"kwNumModels": str(q["model"].nunique()), "kwNumCodecs": str(q["codec"].nunique()),
         "kwNumPrompts": str(int(q["n_prompts"].min())), "kwFloor": f"{floor:g}", **_codec_rows(q)}
    # documents: the independent unit (tables made before document-level sampling lack the column)
    m["kwSampledByDocument"] = "1" if "n_documents" in q.columns else "0"
    if "n_documents" in q.columns:
        m["kwNumDocuments"] = str(int(q["n_documents"].min()))
    for model, g in q[q["codec"] != "identity"].groupby("model"):
        ok = g[g["token_agreement"] >= floor]
        best = ok.loc[ok["ratio"].idxmax()] if len(ok) else None
        m[macro_name("best", "at", "floor", model)] = tt(best["codec"]) if best is not None else "none"
        m[macro_name("best", "at", "floor", "ratio", model)] = num(best["ratio"]) if best is not None else "--"
        top = g.loc[g["ratio"].idxmax()]
        m[macro_name("max", "ratio", model)] = num(top["ratio"])
        m[macro_name("max", "ratio", "codec", model)] = tt(top["codec"])
        m[macro_name("num", "pareto", model)] = str(int(g["pareto"].astype(str).eq("True").sum()))
    return m


def _codec_rows(q: pd.DataFrame) -> dict[str, str]:
    """Per (codec, model) row of a quality table: ratio, agreement with its interval, greedy, delta CE."""
    m = {}
    for r in q.itertuples():
        m[macro_name("ratio", r.codec, r.model)] = num(r.ratio)
        m[macro_name("agree", r.codec, r.model)] = num(r.token_agreement)
        m[macro_name("agree", "lo", r.codec, r.model)] = num(r.token_agreement_ci_lo)
        m[macro_name("agree", "hi", r.codec, r.model)] = num(r.token_agreement_ci_hi)
        m[macro_name("greedy", r.codec, r.model)] = num(r.greedy_match)
        m[macro_name("dce", r.codec, r.model)] = num(r.delta_ce, 2)
    return m


def _sample(t: Tables, floor: float) -> dict[str, str]:
    """What the sample is: datasets, length bins, prompts per (model, dataset, bin)."""
    b = t["quality_by_bin"]
    b = b[b["codec"] == "identity"] if (b["codec"] == "identity").any() else b
    bins = sorted(int(x) for x in b["bin"].unique())
    listed = and_list([f"{x:,}".replace(",", "{,}") for x in bins])
    per_cell = b.groupby(["model", "dataset"])["n_prompts"].sum()
    return {"kwNumDatasets": str(b["dataset"].nunique()), "kwBinsList": listed,
            "kwPromptsPerBin": str(int(b["n_prompts"].min())),
            "kwPromptsPerDataset": str(int(per_cell.min()))}


def _pairs(t: Tables, floor: float) -> dict[str, str]:
    """Each configured codec pair on each model: the agreement difference a - b and its interval."""
    p = t["quality_pairs"]
    m = _pair_rows(p)
    significant = p["token_agreement_significant"].astype(str).eq("True")
    m["kwPairsTotal"] = str(len(p))
    m["kwPairsSignificant"] = str(int(significant.sum()))
    return m


def _pair_rows(p: pd.DataFrame) -> dict[str, str]:
    m = {}
    for r in p.itertuples():
        key = ("pair", r.codec_a, "vs", r.codec_b, r.model)
        m[macro_name(*key)] = num(r.token_agreement_diff, 2)
        m[macro_name(*key[:-1], "lo", r.model)] = num(r.token_agreement_ci_lo, 2)
        m[macro_name(*key[:-1], "hi", r.model)] = num(r.token_agreement_ci_hi, 2)
    return m


def _beyond_main(t: Tables, table: str) -> pd.DataFrame:
    """The rows of a separately published run's table whose models the main study does not have (the
    main study's own numbers always come from its own tables)."""
    extra = t[table]
    main = set(t["quality"]["model"]) if "quality" in t else set()
    return extra[~extra["model"].isin(main)]


def _large_quality(t: Tables, floor: float) -> dict[str, str]:
    """config/qwen1.5b.yaml's run: every codec row of its extra model(s), and its sample size."""
    q = _beyond_main(t, "qwen1.5b/quality")
    m = _codec_rows(q)
    if len(q):
        m["kwLargeNumCodecs"] = str(q["codec"].nunique())
        if "n_documents" in q.columns:
            m["kwLargeNumDocuments"] = str(int(q["n_documents"].min()))
    return m


def _large_pairs(t: Tables, floor: float) -> dict[str, str]:
    return _pair_rows(_beyond_main(t, "qwen1.5b/quality_pairs"))


def _gates(t: Tables, floor: float) -> dict[str, str]:
    g = t["gates"]
    passed = g["passed"].astype(str).eq("True")
    waived = g["waived"].notna() & g["waived"].astype(str).str.len().gt(0) & ~passed
    # which gates are waived, for the sentence that counts them ("int8 on gemma3-270m and ...")
    names = [f"{tt(r.gate)} on {tt(r.model)}" for r in g[waived].sort_values(["model", "gate"]).itertuples()]
    listed = and_list(names) if names else "none"
    return {"kwGatesTotal": str(len(g)), "kwGatesPassed": str(int(passed.sum())), "kwGatesWaived": str(int(waived.sum())),
            "kwGatesWaivedList": listed}


def _spearman(t: Tables, floor: float) -> dict[str, str]:
    s = t["cosine_spearman"]
    m = {}
    for r in s.itertuples():
        m[macro_name("rho", "key", "ce", r.model)] = num(r.rho_key_cosine_vs_delta_ce, 2)
        m[macro_name("rho", "key", "agree", r.model)] = num(r.rho_key_cosine_vs_token_agreement, 2)
        if "rho_key_cosine_vs_delta_ce_dense" in s.columns:  # without the token-dropping codecs
            m[macro_name("rho", "key", "ce", "dense", r.model)] = num(r.rho_key_cosine_vs_delta_ce_dense, 2)
    return m


def _models(t: Tables, floor: float) -> dict[str, str]:
    m = {}
    for r in t["models"].itertuples():
        m[macro_name("layers", r.name)] = str(int(r.num_layers))
        m[macro_name("kv", "heads", r.name)] = str(int(r.num_kv_heads))
        m[macro_name("head", "dim", r.name)] = str(int(r.head_dim))
    return m


def _same_order(a: pd.Series, b: pd.Series) -> bool:
    """Whether two per-model statistics rank the models alike (ties broken by model name)."""
    return list(a.sort_values(kind="stable").index) == list(b.sort_values(kind="stable").index)


def _sensitivity(t: Tables, floor: float) -> dict[str, str]:
    """Each model's key statistics beside its per-token int4 penalty (per-channel minus per-token
    agreement), and whether each statistic orders the models as the penalty does: with few models
    the text can only say which statistic is consistent with the drops, not fit one."""
    s = t["sensitivity"].set_index("model").sort_index()
    m = {}
    for model, r in s.iterrows():
        m[macro_name("key", "outlier", "share", model)] = pct(float(r.key_outlier_channel_share))
        m[macro_name("key", "dynamic", "range", model)] = num(float(r.key_token_dynamic_range), 2)
        m[macro_name("penalty", "int4", model)] = num(float(r.per_token_penalty_int4), 2)
    penalty = s["per_token_penalty_int4"]
    m["kwOutlierOrdersPenalty"] = str(int(_same_order(s["key_outlier_channel_share"], penalty)))
    m["kwRangeOrdersPenalty"] = str(int(_same_order(s["key_token_dynamic_range"], penalty)))
    return m


def _break_even(t: Tables, floor: float) -> dict[str, str]:
    b = t["break_even_all"]
    study = set(t["quality"]["model"]) if "quality" in t else set(b["model"])
    b = b[b["model"].isin(study)]
    # one cache dtype on both encoders: the study's (the CPU rows'); the GPU table also has fp16 rows
    dtype = b[b.device == "cpu"]["dtype"].mode().iloc[0]
    b = b[b["dtype"] == dtype]
    n = int(max(set(b[b.device == "cpu"]["seq"]) & set(b[b.device == "gpu"]["seq"])))
    b = b[b["seq"] == n]
    m = {"kwBreakEvenTokens": str(n), "kwBreakEvenDtype": tt(dtype)}
    cpu_rows = b[b.device == "cpu"].assign(codec_ms=lambda x: x.encode_ms + x.decode_ms)
    m["kwCpuName"] = " / ".join(sorted(set(cpu_rows["device_name"].astype(str))))  # beside every CPU time
    if "threads" in b.columns and cpu_rows["threads"].notna().all():
        counts = sorted({int(x) for x in cpu_rows["threads"]})
        m["kwCpuThreads"] = " or ".join(str(c) for c in counts)
        m["kwCpuThreadsWord"] = ({1: "one thread"}.get(counts[0], f"{counts[0]} threads")
                                 if len(counts) == 1 else f"{m['kwCpuThreads']} threads")
    # kvwire.timing's timer: pass or layer (a table from before the column: the per-layer timer, the only one then)
    timers = cpu_rows["timer"].fillna("layer") if "timer" in cpu_rows.columns else pd.Series(["layer"])
    m["kwCpuTimer"] = " / ".join(sorted(set(timers.astype(str))))
    m.update(_selection_cost(cpu_rows))
    for (device, codec), g in b.groupby(["device", "codec"]):
        m[macro_name("be", device, codec)] = num(g["break_even_gbps_pipelined"].median())
        m[macro_name("be", "seq", device, codec)] = num(g["break_even_gbps_sequential"].median())
    cpu = cpu_rows.set_index(["model", "codec"])
    if {"zstd", "int8"} <= set(cpu.index.get_level_values("codec")):  # what a lossless stage costs
        ratio = (cpu.xs("zstd", level="codec")["codec_ms"] / cpu.xs("int8", level="codec")["codec_ms"]).dropna()
        m["kwZstdCpuOverIntEight"] = num(ratio.median(), 2)
    return m


def _selection_cost(cpu_rows) -> dict[str, str]:
    """What the token-selection codecs pay on the CPU for the attention statistics they read (the
    break-even assumes the prefill hands them over), where the table measured it."""
    if "prefill_stats_ms" not in cpu_rows.columns:
        return {}
    sel = cpu_rows[cpu_rows["prefill_stats_ms"].fillna(0) > 0]
    if not len(sel):
        return {}
    return {"kwStatsCodecs": and_list(sorted(tt(c) for c in set(sel["codec"]))),
            "kwStatsMs": num(sel["prefill_stats_ms"].median(), 2),
            "kwStatsOverEncode": num((sel["prefill_stats_ms"] / sel["encode_ms"]).median(), 2),
            "kwStatsBeFree": num(sel["break_even_gbps_pipelined"].median()),
            "kwStatsBeCharged": num(sel["break_even_gbps_pipelined_with_stats"].median())}


def _shift(t: Tables, floor: float) -> dict[str, str]:
    s = t["break_even_shift"]
    by_codec = s.groupby("codec")["shift_pipelined"].median()
    non_host = by_codec.drop(labels=[c for c in by_codec.index if c.startswith("cachegen")], errors="ignore")
    m = {"kwShiftCases": str(len(s)), "kwShiftMedian": num(s["shift_pipelined"].median(), 2),
         "kwShiftMin": num(non_host.min(), 2), "kwShiftMinCodec": tt(non_host.idxmin()),
         "kwShiftMax": num(non_host.max(), 3), "kwShiftMaxCodec": tt(non_host.idxmax()),
         "kwShiftCachegen": num(by_codec.get("cachegen", float("nan")), 2)}
    return {**m, **_server_shift(s)}


def _server_shift(s) -> dict[str, str]:
    """The GPU against a whole server CPU (the cpu_scaling table's fastest thread count per case),
    where the shift table has that side: the comparison the paper leads with."""
    if "shift_server_pipelined" not in s.columns or not s["shift_server_pipelined"].notna().any():
        return {}
    v = s.dropna(subset=["shift_server_pipelined"])
    threads = sorted({int(x) for x in v["server_threads"]})
    by_codec = v.groupby("codec")["shift_server_pipelined"].median()
    non_host = by_codec.drop(labels=[c for c in by_codec.index if c.startswith("cachegen")], errors="ignore")
    return {"kwShiftServerCases": str(len(v)),
            "kwShiftServerMedian": num(v["shift_server_pipelined"].median(), 2),
            "kwShiftServerMin": num(non_host.min(), 2), "kwShiftServerMinCodec": tt(non_host.idxmin()),
            "kwShiftServerMax": num(non_host.max(), 3), "kwShiftServerMaxCodec": tt(non_host.idxmax()),
            "kwServerCpuName": " / ".join(sorted(set(v["server_cpu_name"].astype(str)))),
            "kwServerLogicalCpus": " or ".join(str(c) for c in sorted({int(x) for x in v["server_logical_cpus"]})),
            "kwServerThreadsRange": (str(threads[0]) if len(threads) == 1 else f"{threads[0]} to {threads[-1]}"),
            "kwServerTokens": " and ".join(str(b) for b in sorted({int(x) for x in v["bin"]})),
            "kwServerModels": {1: "one model", 2: "two models", 3: "three models"}.get(
                v["model"].nunique(), f"{v['model'].nunique()} models"),
            # the study's CPU on the very same cases (the all-case median covers other models and lengths)
            "kwShiftServerVmMedian": num(v["shift_pipelined"].median(), 2)}


GPU_PREFIXES = ("kw", "kwGpuB")  # the kernel macros of the first GPU (sorted by name) and of a second one


def _kernels(t: Tables, floor: float) -> dict[str, str]:
    """The kernel summary per GPU: ``kwGpuName``, ``kwKernelFracMedian``, ... for the first GPU by name,
    the same names prefixed ``kwGpuB`` for a second (``kwGpuCount`` says how many)."""
    k = t["gpu_kernels"]
    # the first GPU: the one with the most large-cache rows (then by name); a GPU timed only at the
    # study's sizes gets no large-cache macros
    large = k.dropna(subset=["frac_copy_median"]).groupby(k["gpu"].astype(str)).size()
    gpus = sorted(k["gpu"].astype(str).unique(), key=lambda g: (-int(large.get(g, 0)), g))
    m = {"kwGpuCount": str(len(gpus))}
    for prefix, gpu in zip(GPU_PREFIXES, gpus):
        m.update({_prefixed(prefix, key): v for key, v in _one_gpu_kernels(k[k["gpu"].astype(str) == gpu]).items()})
    return m


def _prefixed(prefix: str, key: str) -> str:
    """``kwGpuName`` -> ``kwGpuBName``, ``kwCopyGBps`` -> ``kwGpuBCopyGBps`` (``kw``: unchanged)."""
    if prefix == "kw":
        return key
    return prefix + key[len("kwGpu"):] if key.startswith("kwGpu") else prefix + key[2:]


def _one_gpu_kernels(k: pd.DataFrame) -> dict[str, str]:
    copy = k["copy_gbps"].dropna()
    m = {"kwGpuName": str(k["gpu"].iloc[0]).replace("NVIDIA ", ""), "kwCopyGBps": num(copy.iloc[0], 4),
         "kwKernelRows": str(len(k)),
         "kwKernelsConformant": str(int(k["conformant"].astype(str).eq("True").sum())), **_small_kernels(k)}
    big = k.dropna(subset=["frac_copy_median"])
    if len(big):  # caches of 64 MB or more were timed
        best = big.loc[big["frac_copy_median"].idxmax()]
        m.update({"kwKernelFracMedian": pct(big["frac_copy_median"].median()),
                  "kwKernelFracMax": pct(best["frac_copy_median"]), "kwKernelFracMaxCodec": tt(best["codec"]),
                  "kwKernelFracMaxOp": str(best["op"]),
                  "kwEagerSpeedupMedian": num(big["speedup_vs_eager_median"].median(), 2)})
    return m


def _small_kernels(k: pd.DataFrame) -> dict[str, str]:
    """Below 64 MB (the study's own caches): the median kernel's fraction of copy, and the range of
    the per-kernel medians; replayed from CUDA graphs, and the host's µs per call of both, where the
    table has those columns; none when the table predates them."""
    if "frac_copy_small_median" not in k.columns or k["frac_copy_small_median"].isna().all():
        return {}
    med = k["frac_copy_small_median"].dropna()
    m = {"kwKernelFracSmallMedian": pct(med.median()), "kwKernelFracSmallLo": pct(med.min()),
         "kwKernelFracSmallHi": pct(med.max())}
    graph = k["frac_copy_small_graph_median"].dropna() if "frac_copy_small_graph_median" in k.columns else med[:0]
    if len(graph):
        m.update(kwKernelFracSmallGraphMedian=pct(graph.median()), kwKernelFracSmallGraphLo=pct(graph.min()),
                 kwKernelFracSmallGraphHi=pct(graph.max()), kwKernelsGraphed=str(len(graph)),
                 kwHostUsSmallMedian=num(k["host_us_small_median"].median(), 2),
                 kwHostUsSmallGraphMedian=num(k["host_us_small_graph_median"].median(), 2))
    return m


def _gpu_real(t: Tables, floor: float) -> dict[str, str]:
    """The kernels on real caches beside synthetic caches of the same shapes, same GPU, same run: on the
    published kernel table's GPU where it has rows, else on the GPU with the most real caches."""
    r = t["gpu_real_caches"]
    gpus = r["gpu"].value_counts()
    gpu = str(t["gpu_kernels"]["gpu"].iloc[0]) if "gpu_kernels" in t else ""
    r = r[r["gpu"] == (gpu if gpu in gpus.index else gpus.index[0])]
    per_codec = r.drop_duplicates(["model", "codec"])
    same = per_codec["ratio_real_over_synthetic"].round(6).eq(1.0)
    m = {"kwGpuRealGpu": str(r["gpu"].iloc[0]).replace("NVIDIA ", ""),
         "kwGpuRealModels": and_list(sorted(tt(x) for x in set(r["model"]))),
         "kwGpuRealTokens": " and ".join(str(int(x)) for x in sorted(set(r["seq"]))),
         "kwGpuRealTimeMedian": num(r["time_real_over_synthetic"].median(), 2),
         "kwGpuRealTimeLo": num(r["time_real_over_synthetic"].min(), 2),
         "kwGpuRealTimeHi": num(r["time_real_over_synthetic"].max(), 2),
         "kwGpuRealCodecs": str(len(per_codec)), "kwGpuRealSameRatio": str(int(same.sum())),
         "kwGpuRealConformant": str(int(r["conformant"].astype(str).eq("True").sum())),
         "kwGpuRealRows": str(len(r))}
    cg = per_codec[per_codec["codec"] == "cachegen"]
    if len(cg):
        m["kwGpuRealCachegenRatio"] = num(cg["ratio"].median(), 3)
        m["kwGpuRealCachegenRatioSynthetic"] = num(cg["ratio_synthetic"].median(), 3)
    return m


def _e2e(t: Tables, floor: float) -> dict[str, str]:
    e = t["e2e_transfer"]
    e = e[e["wire_bytes"] > 1e6] if (e["wire_bytes"] > 1e6).any() else e  # the goal's range: above 1 MB
    per_rate = e.groupby("rate_gbps")["rel_error"].median()
    m = {"kwEtoEErrMedianLo": pct(per_rate.min()), "kwEtoEErrMedianHi": pct(per_rate.max()),
         "kwEtoEErrMax": pct(e["rel_error"].max()), "kwEtoERates": ", ".join(f"{r:g}" for r in sorted(e.rate_gbps.unique())),
         "kwEtoEModels": str(e["model"].nunique())}
    if "model_source" in e.columns and (e["model_source"] == "time_cpu table").all():
        # fed the break-even's own timing table; the run's own codec times kept beside it
        own = e.groupby("rate_gbps")["rel_error_own"].median()
        lo_rate = e["rate_gbps"].min()
        m.update({"kwEtoEFromTable": "1", "kwEtoEOwnErrMedianLo": pct(own.min()), "kwEtoEOwnErrMedianHi": pct(own.max()),
                  "kwEtoELowRate": f"{lo_rate:g}", "kwEtoEErrMedianLowRate": pct(per_rate.loc[lo_rate]),
                  "kwEtoEErrMaxLowRate": pct(e[e["rate_gbps"] == lo_rate]["rel_error"].max())})
        for mode, g in e.groupby("mode"):
            m[macro_name("e", "enc", "over", "table", mode)] = num(g["encode_in_transfer_over_table"].median(), 2)
    low = e[(e["rate_gbps"] == e["rate_gbps"].min()) & (e["mode"] == "pipelined")]
    for model, g in low.groupby("model"):
        lossy = g[g["codec"] != "identity"]
        best = lossy.loc[lossy["measured_s"].idxmin()]
        m[macro_name("e", "best", model)] = tt(best["codec"])
        m[macro_name("e", "best", "s", model)] = num(best["measured_s"], 2)
        # raw as measured: identity through the same connector on the same link (the model's raw time
        # leaves out the connector's own cost, so quoting it would flatter every codec)
        raw = g[g["codec"] == "identity"]
        if len(raw):
            m[macro_name("e", "raw", "s", model)] = num(float(raw["measured_s"].iloc[0]), 2)
    return m


def _links(t: Tables, floor: float) -> dict[str, str]:
    lm = t["link_model"]
    m = {}
    for r in lm[lm["band"] == "1-100 MB"].itertuples():
        key = "loopback" if r.link == "loopback" else f"veth{int(r.rate_gbps)}"
        m[macro_name("link", "err", key)] = pct(r.rel_error_fitted_median)
        m[macro_name("link", "rate", key)] = num(r.fitted_rate_gbps_first)
        heldout = getattr(r, "rel_error_heldout_median", float("nan"))
        if isinstance(heldout, float) and math.isfinite(heldout):  # fitted on half the sizes, scored on the rest
            m[macro_name("link", "err", "heldout", key)] = pct(heldout)
    return m


def _decision(t: Tables, floor: float) -> dict[str, str]:
    d = t["decision"]
    m = {}
    for encoder, g in d.groupby("encoder"):
        g = g.sort_values("from_gbps")
        raw = g[g["choice"] == "raw"]
        # swept bandwidths are grid points (0.1 ... 12800 Gbps): quoted as they are
        m[macro_name("raw", "from", encoder)] = f"{raw['from_gbps'].min():g}" if len(raw) else "never"
        pays = g[g["choice"] != "raw"]  # the last swept bandwidth where a codec still beats raw
        m[macro_name("pays", "up", "to", encoder)] = f"{pays['to_gbps'].max():g}" if len(pays) else "none"
        m[macro_name("first", "choice", encoder)] = tt(g["choice"].iloc[0])
        m[macro_name("first", "speedup", encoder)] = num(g["speedup_max"].iloc[0])
        m[macro_name("num", "regimes", encoder)] = str(len(g))
    return m


def _router(t: Tables, floor: float) -> dict[str, str]:
    r = t["router"].set_index("router")
    m = {"kwRouterTestPrompts": str(int(r["test_prompts"].iloc[0])),
         "kwRouterTrainPrompts": str(int(r["train_prompts"].iloc[0])),
         "kwRouterFloor": f"{r['floor'].iloc[0]:g}"}
    if {"tree_content", "tree_request"} <= set(r.index):
        better = r.loc["tree_content", "regret_mean"] < r.loc["tree_request", "regret_mean"]
        m["kwRouterContentVerdict"] = "improve on" if better else "do not improve on"
    for name in r.index:
        m[macro_name("router", "acc", name)] = pct(r.loc[name, "accuracy"])
        m[macro_name("router", "regret", name)] = pct(r.loc[name, "regret_mean"])
        m[macro_name("router", "viol", name)] = pct(r.loc[name, "floor_violations"])
        if "vs_best_fixed_mean" in r.columns:
            m[macro_name("router", "vs", "fixed", name)] = pct(r.loc[name, "vs_best_fixed_mean"])
    return m


def _offload(t: Tables, floor: float) -> dict[str, str]:
    """Per model at its longest context: the replay's TPOT per mode, stall, hit rate, prefetch
    precision, TTFT; the simulation's median |error|; the largest context each mode fits."""
    o = t["offload"]
    replay, sim = o[o["kind"] == "replay"], o[o["kind"] == "simulation"]
    m = {"kwOffloadGpu": str(replay["source"].iloc[0]).replace("trace-driven replay on ", ""),
         "kwOffloadSimErrTpot": pct(float(sim["sim_error_tpot"].abs().median())),
         "kwOffloadSimErrTpotMax": pct(float(sim["sim_error_tpot"].abs().max())),
         "kwOffloadSimErrTtft": pct(float(sim["sim_error_ttft"].abs().median()))}
    for model, rows in replay.groupby("model"):
        top = rows[rows["context"] == rows["context"].max()].set_index("mode")
        m[macro_name("offload", "context", model)] = f"{int(rows['context'].max()):,}".replace(",", "{,}")
        for mode in top.index:
            r = top.loc[mode]
            m[macro_name("offload", "tpot", mode, model)] = num(float(r["tpot_p50_ms"]), 4) + r"\,ms"
            m[macro_name("offload", "ttft", mode, model)] = num(float(r["ttft_ms"])) + r"\,ms"
            host = float(r.get("ttft_host_ms", math.nan))  # when the host had issued step 1 (GPU runs only)
            m[macro_name("offload", "ttfthost", mode, model)] = num(host) + r"\,ms" if math.isfinite(host) else "n/a"
            m[macro_name("offload", "fits", mode, model)] = f"{int(r['largest_context']):,}".replace(",", "{,}")
            if mode != "all_gpu":
                m[macro_name("offload", "stall", mode, model)] = num(float(r["stall_pct"]), 2) + r"\,\%"
                m[macro_name("offload", "hit", mode, model)] = pct(float(r["hit_rate"]), 3)
            if mode.startswith("predictive"):
                m[macro_name("offload", "precision", mode, model)] = pct(float(r["prefetch_precision"]))
                m[macro_name("offload", "recall", mode, model)] = pct(float(r["predict_recall"]), 3)
        m[macro_name("offload", "coverage", model)] = pct(float(top["coverage"].iloc[0]), 3)
    return m


SECTIONS: dict[str, Callable[[Tables, float], dict[str, str]]] = {
    "quality": _quality, "quality_by_bin": _sample, "quality_pairs": _pairs, "gates": _gates,
    "cosine_spearman": _spearman, "models": _models, "sensitivity": _sensitivity,
    "break_even_all": _break_even, "break_even_shift": _shift, "gpu_kernels": _kernels,
    "gpu_real_caches": _gpu_real, "e2e_transfer": _e2e,
    "link_model": _links, "decision": _decision, "router": _router, "offload": _offload,
    "qwen1.5b/quality": _large_quality, "qwen1.5b/quality_pairs": _large_pairs,
}


def _provenance(manifest: dict) -> dict[str, str]:
    """From the published set's manifest (PUBLISHED.json): the study run's commit, the tables replaced
    since by runs measured apart or re-timed, and whether the router (which reads the per-prompt
    quality records and changes only with a whole run) is older than the re-timed break-even."""
    from ..publish import RETIMED

    if not isinstance(manifest, dict) or not isinstance(manifest.get("updates", []), list):
        raise KvwireError("the publication manifest is not an object with a list of updates")
    m = {"kwPublishedCommit": tt(str(manifest.get("commit", ""))[:7] or "unknown")}
    replaced = list(dict.fromkeys(str(u["table"]) for u in manifest.get("updates", [])
                                  if isinstance(u, dict) and "table" in u))
    if replaced:
        m["kwUpdatedTables"] = and_list([tt(n) for n in replaced])
    if any(n in RETIMED for n in replaced) and "router.csv" not in replaced:
        m["kwRouterTimesOlder"] = "1"
    return m


def build_macros(tables: Tables, floor: float, manifest: dict | None = None) -> tuple[dict[str, str], list[str]]:
    """(macro -> LaTeX text, missing tables); ``manifest``: the published set's PUBLISHED.json, where
    the tables are a published set."""
    macros, missing = ({} if manifest is None else _provenance(manifest)), []
    for table, section in SECTIONS.items():
        flag = macro_name("have", table)
        if table not in tables:
            missing.append(table)
            macros[flag] = "0"
            continue
        macros[flag] = "1"
        for name, value in section(tables, floor).items():
            if not re.fullmatch(r"kw[A-Za-z]+", name):
                raise ValueError(f"{name!r} is not a LaTeX command name")
            macros[name] = value
    return macros, missing


def render_macros(macros: Mapping[str, str], missing: list[str]) -> str:
    """The macros file: ``\\newcommand`` per macro; every macro a missing table would have defined falls
    back, in the .tex, to ``\\kwNoData`` through ``\\providecommand`` (see paper/kvwire.tex)."""
    lines = ["% Generated by rule paper_macros from the cached tables: do not edit.",
             f"% missing tables: {', '.join(missing) or 'none'}"]
    lines += [f"\\newcommand{{\\{k}}}{{{v}}}" for k, v in sorted(macros.items())]
    return "\n".join(lines) + "\n"
