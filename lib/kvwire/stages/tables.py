"""Stage: aggregate per-job results into the study's summary tables (CSV and LaTeX)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..io import atomic_path, read_json, write_csv

QUALITY_COLUMNS = ["token_agreement", "delta_ce", "greedy_match", "first_divergence", "key_cosine",
                   "value_cosine", "key_rel_mse", "value_rel_mse"]


def quality_table(quality_jsons: list[str | Path], out_csv: str | Path, cost_csv: str | Path) -> pd.DataFrame:
    """One row per (model, dataset, bin, codec): means over prompts. Measured CPU cost goes to a
    separate table so ``quality.csv`` is byte-identical across reruns of the same config."""
    rows, costs = [], []
    for path in quality_jsons:
        path = Path(path)
        result = read_json(path)
        model, dataset, bin_ = path.parts[-4], path.parts[-3], int(path.parts[-2])
        rows.append({"model": model, "dataset": dataset, "bin": bin_, "codec": result["codec_id"],
                     "n_prompts": result["n_prompts"], "ratio": result["ratio"],
                     **{m: result["summary"][m] for m in QUALITY_COLUMNS}})
        costs.append({"model": model, "dataset": dataset, "bin": bin_, "codec": result["codec_id"],
                      "n_prompts": result["n_prompts"], "cpu_seconds": result["cpu_seconds"],
                      "wall_seconds": result["wall_seconds"],
                      "cpu_seconds_per_prompt": result["cpu_seconds_per_prompt"]})
    keys = ["model", "dataset", "bin", "codec"]
    table = pd.DataFrame(rows).sort_values(keys).reset_index(drop=True)
    write_csv(out_csv, table)
    write_csv(cost_csv, pd.DataFrame(costs).sort_values(keys).reset_index(drop=True))
    return table


CODEC_ERROR_COLUMNS = ["key_cosine", "value_cosine", "key_rel_mse", "value_rel_mse"]


def codecs_table(quality_jsons: list[str | Path], out_csv: str | Path) -> pd.DataFrame:
    """One row per (model, codec) over all of the model's prompts: the measured ratio (total raw
    bytes / total wire bytes) and the mean per-prompt key/value cosine and relative MSE."""
    rows = []
    for path in quality_jsons:
        path = Path(path)
        result = read_json(path)
        for r in result["rows"]:
            rows.append({"model": path.parts[-4], "codec": result["codec_id"], "codec_name": result["codec"],
                         "raw_bytes": r["raw_bytes"], "wire_bytes": r["wire_bytes"],
                         **{m: r[m] for m in CODEC_ERROR_COLUMNS}})
    per_prompt = pd.DataFrame(rows)
    grouped = per_prompt.groupby(["model", "codec"], sort=True)
    table = grouped[CODEC_ERROR_COLUMNS].mean()
    table.insert(0, "n_prompts", grouped.size())
    table.insert(0, "ratio", grouped["raw_bytes"].sum() / grouped["wire_bytes"].sum())
    table.insert(0, "codec_name", grouped["codec_name"].first())
    table = table.reset_index()
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
    keys = ["name", "architecture", "num_layers", "num_heads", "num_kv_heads", "head_dim", "hidden_size",
            "vocab_size", "rope_theta", "sliding_window", "source", "sha256"]
    rows = [{k: read_json(p).get(k) for k in keys} for p in facts_jsons]
    table = pd.DataFrame(rows)
    write_csv(out_csv, table)
    return table
