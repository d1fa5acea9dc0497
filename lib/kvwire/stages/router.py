"""The router study from the workflow's files (rule router): every prompt's quality records and KV
statistics read from disk, labelled and evaluated by ``kvwire.router``."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from ..io import read_json, write_csv
from ..router import evaluate, label_examples


def prompt_features(kv_manifests: Sequence[str | Path], model_of: dict[str, str] | None = None) -> pd.DataFrame:
    """Per prompt: its KV statistics (means over layers, and the spread of the key outlier-channel
    share over layers), from the extraction manifests ``results/kv/{model}/{dataset}/{bin}/manifest.json``."""
    from ..kv import load_kv
    from ..kvstats import record_statistics

    rows = []
    for manifest in map(Path, kv_manifests):
        model, dataset, b = manifest.parts[-4], manifest.parts[-3], int(manifest.parts[-2])
        for p in read_json(manifest)["prompts"]:
            stats = pd.DataFrame(record_statistics(load_kv(manifest.parent / p["file"]).layers))
            rows.append({"model": model, "dataset": dataset, "bin": b, "prompt_id": p["prompt_id"],
                         "key_outlier_share": stats["key_outlier_channel_share"].mean(),
                         "key_outlier_layer_spread": stats["key_outlier_channel_share"].std(ddof=0),
                         "key_dynamic_range": stats["key_token_dynamic_range"].mean(),
                         "value_dynamic_range": stats["value_token_dynamic_range"].mean(),
                         "key_kurtosis": stats["key_kurtosis"].mean()})
    if not rows:
        raise ValueError("no prompts in the KV manifests")
    return pd.DataFrame(rows)


def prompt_quality(quality_jsons: Sequence[str | Path]) -> pd.DataFrame:
    """Per (prompt, codec): token agreement and the real wire and raw bytes."""
    rows = []
    for path in map(Path, quality_jsons):
        result = read_json(path)
        for r in result["rows"]:
            rows.append({"model": path.parts[-2], "dataset": r["dataset"], "bin": int(r["bin"]),
                         "prompt_id": r["prompt_id"], "codec": result["codec_id"],
                         "token_agreement": r["token_agreement"], "wire_bytes": r["wire_bytes"],
                         "raw_bytes": r["raw_bytes"]})
    return pd.DataFrame(rows)



def router_study(quality_jsons, kv_manifests, timings_csv, bandwidths_gbps, floor, out_examples, out_summary,
                 out_by_bandwidth, *, seed: int = 0) -> pd.DataFrame:
    examples = label_examples(prompt_quality(quality_jsons), prompt_features(kv_manifests),
                              pd.read_csv(timings_csv), bandwidths_gbps, floor)
    summary, per_bw = evaluate(examples, seed=seed)
    summary.insert(0, "floor", floor)
    write_csv(out_examples, examples)
    write_csv(out_summary, summary)
    write_csv(out_by_bandwidth, per_bw)
    return summary
