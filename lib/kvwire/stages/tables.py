"""Stage: aggregate per-job results into the study's summary tables (CSV and LaTeX)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_path, read_json, write_csv

QUALITY_COLUMNS = ["token_agreement", "delta_ce", "greedy_match", "first_divergence", "key_cosine",
                   "value_cosine", "key_rel_mse", "value_rel_mse", "attention_retention", "attention_retention_min"]


def quality_by_bin(quality_jsons: list[str | Path], out_csv: str | Path, cost_csv: str | Path) -> pd.DataFrame:
    """One row per (model, dataset, bin, codec): means over prompts and the ratio from bytes. Measured
    CPU cost (per quality job, i.e. per (model, codec), and per prompt and codec) goes to a separate table so the quality
    tables are byte-identical across reruns of the same config."""
    per_prompt = _prompt_rows(quality_jsons)
    keys = ["model", "dataset", "bin", "codec"]
    grouped = per_prompt.groupby(keys, sort=True)
    table = grouped[[m for m in QUALITY_COLUMNS if m in per_prompt]].mean().reindex(columns=QUALITY_COLUMNS)
    table.insert(0, "ratio", grouped["raw_bytes"].sum() / grouped["wire_bytes"].sum())
    table.insert(0, "n_prompts", grouped.size())
    table = table.reset_index()
    write_csv(out_csv, table)
    costs = []
    for path in quality_jsons:
        result = read_json(path)
        costs.append({"model": Path(path).parts[-2], "codec": result["codec_id"],
                      "n_prompts": result["n_prompts"], "cpu_seconds": result["cpu_seconds"],
                      "wall_seconds": result["wall_seconds"],
                      "cpu_seconds_per_prompt": result["cpu_seconds_per_prompt"],
                      "reference_cpu_seconds_per_prompt": result["reference_cpu_seconds"] / result["n_prompts"]})
    write_csv(cost_csv, pd.DataFrame(costs).sort_values(["model", "codec"]).reset_index(drop=True))
    return table


CODEC_ERROR_COLUMNS = ["key_cosine", "value_cosine", "key_rel_mse", "value_rel_mse"]


def codecs_table(quality_jsons: list[str | Path], out_csv: str | Path) -> pd.DataFrame:
    """One row per (model, codec) over all of the model's prompts: the measured ratio (total raw
    bytes / total wire bytes) and the mean per-prompt key/value cosine and relative MSE."""
    per_prompt = _prompt_rows(quality_jsons)
    grouped = per_prompt.groupby(["model", "codec"], sort=True)
    table = grouped[CODEC_ERROR_COLUMNS].mean()
    table.insert(0, "n_prompts", grouped.size())
    table.insert(0, "ratio", grouped["raw_bytes"].sum() / grouped["wire_bytes"].sum())
    table.insert(0, "codec_name", grouped["codec_name"].first())
    table = table.reset_index()
    write_csv(out_csv, table)
    return table


def _prompt_rows(quality_jsons: list[str | Path]) -> pd.DataFrame:
    """Every per-prompt quality row of every job (``results/quality/{model}/{codec}.json``), keyed by
    model, dataset, bin, codec and prompt."""
    rows = []
    for path in quality_jsons:
        path = Path(path)
        result = read_json(path)
        model = path.parts[-2]
        for r in result["rows"]:
            rows.append({"model": model, "codec": result["codec_id"], "codec_name": result["codec"],
                         "prompt": f"{r['dataset']}/{r['bin']}/{r['prompt_id']}",
                         "document": f"{r['dataset']}/{r['prompt_id']}", **r})
    return pd.DataFrame(rows)


def _documents(rows: pd.DataFrame) -> dict[str, str]:
    """prompt -> document: the independent unit the bootstrap resamples. A prompt id is its
    document's id, so prompts cut from one document (older studies' nested prefixes) share one."""
    return dict(zip(rows.prompt, rows.document))


SUMMARY_METRICS = ("token_agreement", "delta_ce", "greedy_match")
# ratios this close are one ratio on the Pareto front: int8 and fp8_e4m3 write the same payload
# layout and differ by ~1 KB of header parameters in 500 MB (2.5e-6)
PARETO_RATIO_RTOL = 1e-3
RETENTION_COLUMNS = ("attention_retention", "attention_retention_min")


def quality_by_model(quality_jsons: list[str | Path], out_csv: str | Path, *, seed: int,
                     n_boot: int = 2000) -> pd.DataFrame:
    """The main table (``quality.csv``): one row per (model, codec) over all of the model's prompts.

    Ratio from bytes (total raw / total wire); means of token agreement, delta cross-entropy
    (nats/token) and greedy match with 95 % paired bootstrap intervals against identity (the same
    prompts through the identity codec: differences per prompt, resampled by document, the
    independent unit); the perplexity ratio exp(mean delta_ce) with the interval mapped through exp;
    and whether the codec is on the model's Pareto front of ratio x token agreement, where an
    agreement difference counts only if its paired interval excludes 0.
    """
    from ..analysis import paired_bootstrap_ci, pareto_front, significance_signs
    from ..errors import ConfigError

    rows = _prompt_rows(quality_jsons)
    out = []
    for model, per_model in rows.groupby("model", sort=True):
        ident = per_model[per_model.codec == "identity"]
        if ident.empty:
            raise ConfigError(f"model {model!r}: the paired intervals need the identity codec in the study "
                              f"(config key 'codecs.identity')")
        base = {m: dict(zip(ident.prompt, ident[m])) for m in SUMMARY_METRICS}
        documents = _documents(per_model)
        for i, (codec, g) in enumerate(per_model.groupby("codec", sort=True)):
            row = {"model": model, "codec": codec, "n_prompts": len(g), "n_documents": g.document.nunique(),
                   "ratio": g.raw_bytes.sum() / g.wire_bytes.sum()}
            for m in SUMMARY_METRICS:
                diff, lo, hi = paired_bootstrap_ci(dict(zip(g.prompt, g[m])), base[m], seed=seed + i,
                                                   n_boot=n_boot, clusters=documents)
                ref = sum(base[m].values()) / len(base[m])
                row[m], row[f"{m}_ci_lo"], row[f"{m}_ci_hi"] = ref + diff, ref + lo, ref + hi
            row["ppl_ratio"] = float(np.exp(row["delta_ce"]))
            row["ppl_ratio_ci_lo"], row["ppl_ratio_ci_hi"] = (float(np.exp(row["delta_ce_ci_lo"])),
                                                              float(np.exp(row["delta_ce_ci_hi"])))
            row["first_divergence"] = g.first_divergence.mean()
            row["key_cosine"], row["value_cosine"] = g.key_cosine.mean(), g.value_cosine.mean()
            for m in RETENTION_COLUMNS:  # blank where the reference recorded no attention
                row[m] = g[m].mean() if m in g else float("nan")
            out.append(row)
    table = pd.DataFrame(out)
    table["pareto"] = False
    for model, idx in table.groupby("model").groups.items():
        sub = table.loc[idx]
        per_model = rows[rows.model == model]
        samples = {c: dict(zip(g.prompt, g.token_agreement)) for c, g in per_model.groupby("codec")}
        names, signs = significance_signs(samples, seed=seed, clusters=_documents(per_model), n_boot=n_boot)
        order = [names.index(c) for c in sub.codec]
        table.loc[idx, "pareto"] = pareto_front(sub.ratio.values, sub.token_agreement.values,
                                                ratio_rtol=PARETO_RATIO_RTOL,
                                                quality_signs=signs[np.ix_(order, order)])
    write_csv(out_csv, table)
    return table


PAIR_METRICS = ("token_agreement", "delta_ce", "greedy_match")


def quality_pairs(quality_jsons: list[str | Path], out_csv: str | Path, pairs: list[list[str]], *, seed: int,
                  n_boot: int = 2000) -> pd.DataFrame:
    """Codec against codec on the same documents (``quality_pairs.csv``): for each model and each
    configured pair (a, b) both ran on, the mean of a and of b and the mean difference a - b with its
    95 % paired bootstrap interval (resampled by document), and whether it excludes 0."""
    from ..analysis import paired_bootstrap_ci
    from ..errors import ConfigError

    rows = _prompt_rows(quality_jsons)
    codecs = set(rows.codec)
    for pair in pairs:
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ConfigError(f"quality.pairs: {pair!r} is not a pair of two different codec ids")
        missing = [c for c in pair if c not in codecs]
        if missing:
            raise ConfigError(f"quality.pairs: {pair!r} names codecs no quality record holds: {missing}")
    out = []
    for model, per_model in rows.groupby("model", sort=True):
        documents = _documents(per_model)
        by_codec = {c: g for c, g in per_model.groupby("codec")}
        for k, (a, b) in enumerate(pairs):
            if a not in by_codec or b not in by_codec:
                continue  # not run on this model (a model slice); the table says which pairs it has
            ga, gb = by_codec[a], by_codec[b]
            common = sorted(set(ga.prompt) & set(gb.prompt))
            row = {"model": model, "codec_a": a, "codec_b": b, "n_prompts": len(common),
                   "n_documents": len({documents[p] for p in common}),
                   "ratio_a": ga.raw_bytes.sum() / ga.wire_bytes.sum(),
                   "ratio_b": gb.raw_bytes.sum() / gb.wire_bytes.sum()}
            for m in PAIR_METRICS:
                va = dict(zip(ga.prompt, ga[m]))
                vb = dict(zip(gb.prompt, gb[m]))
                va, vb = {p: va[p] for p in common}, {p: vb[p] for p in common}
                diff, lo, hi = paired_bootstrap_ci(va, vb, seed=seed + k, n_boot=n_boot, clusters=documents)
                row.update({f"{m}_a": float(np.mean(list(va.values()))), f"{m}_b": float(np.mean(list(vb.values()))),
                            f"{m}_diff": diff, f"{m}_ci_lo": lo, f"{m}_ci_hi": hi,
                            f"{m}_significant": bool(lo > 0 or hi < 0)})
            out.append(row)
    table = pd.DataFrame(out)
    write_csv(out_csv, table)
    return table


def attention_retention_table(quality_jsons: list[str | Path], out_csv: str | Path) -> pd.DataFrame:
    """Per layer, for every codec that drops tokens: the share of the original cache's attention
    mass (the continuation's queries over the prefix, recorded by the reference) that falls on the
    tokens the decoded cache kept; mean and weakest prompt per (model, codec, layer). Codecs that keep
    every token (retention 1.0 on every layer of every prompt) are left out."""
    rows = _prompt_rows(quality_jsons)
    columns = ["model", "codec", "layer", "n_prompts", "attention_retention", "attention_retention_min"]
    long = []
    if "attention_retention_layers" in rows:
        for r in rows[rows.attention_retention_layers.notna()].itertuples():
            long += [{"model": r.model, "codec": r.codec, "prompt": r.prompt, "layer": i, "retention": v}
                     for i, v in enumerate(r.attention_retention_layers)]
    long = pd.DataFrame(long, columns=["model", "codec", "prompt", "layer", "retention"])
    drops = long.groupby(["model", "codec"])["retention"].transform("min") < 1.0
    grouped = long[drops].groupby(["model", "codec", "layer"], sort=True)["retention"]
    table = pd.DataFrame({"n_prompts": grouped.size(), "attention_retention": grouped.mean(),
                          "attention_retention_min": grouped.min()}).reset_index().reindex(columns=columns)
    write_csv(out_csv, table)
    return table


def cosine_spearman(quality_jsons: list[str | Path], out_csv: str | Path) -> pd.DataFrame:
    """Does K/V cosine similarity predict quality? Spearman, per model, over every (lossy codec,
    prompt) pair: cosine vs delta cross-entropy and vs token agreement (a good predictor has a
    strongly negative rho with delta_ce and a positive one with agreement). Token-selection codecs
    count as lossy: their kept tokens are exact (cosine 1 over what they send), which is exactly
    the blind spot of cosine as a predictor, so they stay in. The ``_dense`` columns leave out every
    codec that dropped a token of some prompt (attention retention below 1), whose cosine says
    nothing about what it dropped: the correlation among codecs that keep every token."""
    from ..analysis import spearman

    rows = _prompt_rows(quality_jsons)
    changed = (rows.key_rel_mse > 0) | (rows.value_rel_mse > 0) | (rows.delta_ce != 0) | (rows.token_agreement < 1)
    lossy = rows[rows.codec.isin(set(rows.codec[changed]))]
    dropping = set(rows.codec[rows.attention_retention_min < 1]) if "attention_retention_min" in rows else set()
    out = []
    for model, g in lossy.groupby("model", sort=True):
        dense = g[~g.codec.isin(dropping)]
        rec = {"model": model, "n_pairs": len(g), "n_codecs": g.codec.nunique(),
               "n_codecs_dense": dense.codec.nunique()}
        for cos in ("key_cosine", "value_cosine"):
            rec[f"rho_{cos}_vs_delta_ce"] = spearman(g[cos].values, g.delta_ce.values)
            rec[f"rho_{cos}_vs_token_agreement"] = spearman(g[cos].values, g.token_agreement.values)
            rec[f"rho_{cos}_vs_delta_ce_dense"] = spearman(dense[cos].values, dense.delta_ce.values)
        out.append(rec)
    table = pd.DataFrame(out)
    write_csv(out_csv, table)
    return table


def sanity_gates(quality_jsons: list[str | Path], out_csv: str | Path, floors: dict[str, float] | None = None,
                 waivers: dict[str, dict[str, str]] | None = None) -> pd.DataFrame:
    """Evaluate the sanity gates (``kvwire.gates``) per model, write the table, then raise GateError
    if any failed (the table is logged first: the job's failure removes its output)."""
    from ..gates import evaluate_gates, require_gates
    from .runtime import LOG

    table = evaluate_gates(_prompt_rows(quality_jsons), floors, waivers)
    LOG.info("sanity gates:\n%s", table.to_string(index=False))
    write_csv(out_csv, table)
    require_gates(table)
    return table


def kv_statistics(kv_manifests: list[str | Path], out_csv: str | Path, *, model: str) -> pd.DataFrame:
    """Per-layer statistics of a model's real caches (``kvwire.kvstats``), averaged over every prompt."""
    from ..kvstats import model_statistics
    from .extract import kv_files

    table = model_statistics(kv_files(kv_manifests), model=model)
    write_csv(out_csv, table)
    return table


# Pairs of codec ids that differ only in quantization granularity: (per token, the other)
GRANULARITY_PAIRS = {"int8": "int8_channel", "int4": "int4_channel"}


def model_sensitivity(kvstats_csvs: list[str | Path], models_csv: str | Path, quality_csv: str | Path,
                      out_csv: str | Path) -> pd.DataFrame:
    """One row per model: its shape (GQA ratio, head dim, layers), what its caches look like
    (``kvwire.kvstats.summarise``) and how much quality each codec costs it.

    ``drop_<codec>``: identity's token agreement minus the codec's (``quality.csv``). For each
    granularity pair in GRANULARITY_PAIRS present in the study, ``per_token_penalty_<codec>`` is the
    per-channel setting's agreement minus the per-token one's: positive when per-token scales suffer
    from outlier channels, which ``key_outlier_channel_share`` and ``key_token_dynamic_range`` measure.
    """
    from ..kvstats import summarise

    stats = summarise(pd.concat([pd.read_csv(p) for p in kvstats_csvs], ignore_index=True))
    models = pd.read_csv(models_csv).rename(columns={"name": "model"})
    models["gqa_ratio"] = models.num_heads / models.num_kv_heads
    table = models[["model", "architecture", "num_layers", "num_heads", "num_kv_heads", "gqa_ratio",
                    "head_dim"]].merge(stats, on="model", how="inner")
    quality = pd.read_csv(quality_csv)
    agreement = quality.pivot(index="model", columns="codec", values="token_agreement")
    if "identity" not in agreement:
        from ..errors import ConfigError

        raise ConfigError("the sensitivity table needs the identity codec in the study")
    for codec in sorted(c for c in agreement.columns if c != "identity"):
        table[f"drop_{codec}"] = table.model.map(agreement["identity"] - agreement[codec])
    for token, other in GRANULARITY_PAIRS.items():
        if token in agreement and other in agreement:
            table[f"per_token_penalty_{token}"] = table.model.map(agreement[other] - agreement[token])
    table = table.sort_values("model").reset_index(drop=True)
    write_csv(out_csv, table)
    return table


def break_even_table(break_even_csvs: list[str | Path], sweep_csvs: list[str | Path], out_csv: str | Path,
                     out_tex: str | Path, out_sweep: str | Path) -> pd.DataFrame:
    table = pd.concat([pd.read_csv(p) for p in break_even_csvs], ignore_index=True)
    table = table.sort_values(["model", "dataset", "bin", "device", "codec"]).reset_index(drop=True)
    write_csv(out_csv, table)
    sweep = pd.concat([pd.read_csv(p) for p in sweep_csvs], ignore_index=True)
    write_csv(out_sweep, sweep.sort_values(["model", "dataset", "bin", "codec", "bandwidth_gbps"]))
    tex = table[["model", "dataset", "bin", "device", "codec", "ratio", "encode_s", "decode_s",
                 "break_even_gbps_sequential", "break_even_gbps_pipelined"]].copy()
    tex["encode_s"] *= 1e3
    tex["decode_s"] *= 1e3
    tex.columns = ["Model", "Dataset", "Tokens", "Device", "Codec", "Ratio", "Enc. (ms)", "Dec. (ms)",
                   "Break-even seq. (Gbps)", "Break-even pipe. (Gbps)"]
    latex = tex.to_latex(index=False, float_format="%.3g", escape=True,
                         caption="Break-even bandwidth per codec: compression pays off below it "
                                 "(made by rule break\\_even\\_table).",
                         label="tab:break-even")
    with atomic_path(out_tex) as tmp:
        tmp.write_text(latex, encoding="utf-8")
    return table


def models_table(facts_jsons: list[str | Path], out_csv: str | Path) -> pd.DataFrame:
    """One row per model from its facts.json; ``layer_types`` is the sliding-window layout as one letter
    per layer (S: sliding, F: full attention; empty without a window), which ``kvwire.windows`` reads to
    count what a cache of any length keeps (``kvwire recommend``)."""
    from ..windows import layer_letters, layout_of

    keys = ["name", "architecture", "num_layers", "num_heads", "num_kv_heads", "head_dim", "hidden_size",
            "vocab_size", "rope_theta", "sliding_window", "source", "sha256"]
    rows = []
    for p in facts_jsons:
        facts = read_json(p)
        types, window = layout_of(facts)
        rows.append({**{k: facts.get(k) for k in keys}, "layer_types": layer_letters(types) if window else ""})
    table = pd.DataFrame(rows)
    write_csv(out_csv, table)
    return table


def quality_summary(quality_jsons: list[str | Path], by_model_csv: str | Path, spearman_csv: str | Path,
                    retention_csv: str | Path, *, seed: int) -> None:
    """Rule quality_summary's three tables from every codec's quality records."""
    quality_by_model(quality_jsons, by_model_csv, seed=seed)
    cosine_spearman(quality_jsons, spearman_csv)
    attention_retention_table(quality_jsons, retention_csv)
