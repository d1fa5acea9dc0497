"""Stage: decode each prompt's wire bytes, re-inject them and score against the original cache."""

from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm

from .. import wire
from ..errors import KVError
from ..io import read_json, write_json
from ..kv import load_kv
from ..models import load_model
from ..quality import group_by_shape, score_batch
from .encode import wire_files
from .extract import kv_files
from .runtime import DTYPES, LOG

METRICS = ("token_agreement", "delta_ce", "ce_ref", "ce", "greedy_match", "first_divergence",
           "key_cosine", "value_cosine", "key_rel_mse", "value_rel_mse")


def score_codec(facts_path: str | Path, kv_manifest: str | Path, wire_manifest: str | Path, out_path: str | Path,
                *, generate_tokens: int = 32, batch_size: int = 8, dtype: str = "bfloat16") -> dict:
    model, _ = load_model(Path(facts_path).parent, dtype=DTYPES[dtype], device="cpu")
    kv_paths, wire_paths = kv_files(kv_manifest), wire_files(wire_manifest)
    if [p.stem for p in kv_paths] != [p.stem for p in wire_paths]:
        raise KVError(f"{wire_manifest} does not cover the same prompts as {kv_manifest}")
    wire_meta = read_json(wire_manifest)
    rows, t0 = [], time.process_time()
    wall0 = time.perf_counter()
    for start in tqdm(range(0, len(kv_paths), batch_size), desc=f"quality {wire_meta['codec_id']}", unit="batch"):
        records = [load_kv(p) for p in kv_paths[start:start + batch_size]]
        for r, p in zip(records, kv_paths[start:start + batch_size]):
            r.require_scoring_inputs(str(p))
        decoded = [wire.decode(p.read_bytes())[1] for p in wire_paths[start:start + batch_size]]
        for group in group_by_shape(decoded):
            scored = score_batch(model, [records[i] for i in group], [decoded[i] for i in group], generate_tokens)
            for i, row in zip(group, scored):
                row["wire_bytes"] = wire_meta["prompts"][start + i]["wire_bytes"]
                row["raw_bytes"] = records[i].raw_bytes
                row["ratio"] = row["raw_bytes"] / row["wire_bytes"]
                rows.append(row)
    cpu_s, wall_s = time.process_time() - t0, time.perf_counter() - wall0
    summary = {m: sum(r[m] for r in rows) / len(rows) for m in METRICS}
    result = {"codec_id": wire_meta["codec_id"], "codec": wire_meta["codec"], "params": wire_meta["params"],
              "n_prompts": len(rows), "ratio": wire_meta["ratio"], "generate_tokens": generate_tokens,
              "summary": summary, "rows": rows, "cpu_seconds": cpu_s, "wall_seconds": wall_s,
              "cpu_seconds_per_prompt": cpu_s / len(rows)}
    LOG.info("%s: agreement %.4f, delta ce %.5f, ratio %.3f", wire_meta["codec_id"],
             summary["token_agreement"], summary["delta_ce"], wire_meta["ratio"])
    write_json(out_path, result)
    return result
