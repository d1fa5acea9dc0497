"""Stage: decode each prompt's wire bytes, re-inject them and score against the original cache.

The original cache's behaviour (the reference) is computed once per model (every dataset and bin) by
``reference_for`` and cached; every codec's quality job then runs only its decoded caches, in the
same batches the reference used, so identity still scores exactly 1.0 / 0.0.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from .. import wire
from ..errors import KVError
from ..io import atomic_path, read_json, write_json
from ..kv import load_kv, transpose_linears_for_cpu
from ..models import load_model
from ..quality import Reference, bit_identical, group_by_shape, reference_batch, score_batch
from .encode import wire_files
from .extract import kv_batches, kv_files
from .device import DTYPES, pick_device
from .runtime import LOG

OPTIONAL_METRICS = ("attention_retention", "attention_retention_min")  # with a recorded reference attention
METRICS = ("token_agreement", "delta_ce", "ce_ref", "ce", "greedy_match", "first_divergence",
           "key_cosine", "value_cosine", "key_rel_mse", "value_rel_mse")


REFERENCE_FORMAT = "kvwire-reference/2"  # 2: scored with transposed linears
KVManifests = Union[str, Path, Sequence[Union[str, Path]]]  # one extraction manifest or several (bins)


def reference_for(facts_path: str | Path, kv_manifests: KVManifests, out_path: str | Path, *,
                  generate_tokens: int = 32, batch_size: int = 8, dtype: str = "float32",
                  device: str = "cpu") -> dict:
    """Run every prompt's original cache once and cache what scoring compares against.

    ``kv_manifests``: one extraction manifest or several (every dataset and bin of a model); a batch
    holds prompts of one length (``kv_batches``). ``dtype``: the dtype the model computes in while
    scoring (see ``score_codec``); ``device``: where (``auto``: a GPU when visible). Codec jobs must
    use the same dtype, batches and device, so the file records them."""
    device = str(pick_device(device))
    model = transpose_linears_for_cpu(load_model(Path(facts_path).parent, dtype=DTYPES[dtype], device=device)[0])
    kv_paths = kv_files(kv_manifests)
    tensors, t0 = {}, time.process_time()
    for batch in tqdm(kv_batches(kv_manifests, batch_size), desc="reference", unit="batch"):
        records = [load_kv(p) for p in batch]
        for r, p in zip(records, batch):
            r.require_scoring_inputs(str(p))
        for p, ref in zip(batch, reference_batch(model, records, generate_tokens)):
            tensors[f"{p.stem}.argmax"] = ref.argmax.contiguous()
            tensors[f"{p.stem}.ce"] = ref.ce.contiguous()
            tensors[f"{p.stem}.greedy"] = ref.greedy.contiguous()
            tensors[f"{p.stem}.attention"] = ref.attention.contiguous()
    meta = {"format": REFERENCE_FORMAT, "prompts": json.dumps([p.stem for p in kv_paths]),
            "generate_tokens": str(generate_tokens), "batch_size": str(batch_size), "dtype": dtype, "device": device,
            "cpu_seconds": repr(time.process_time() - t0)}
    with atomic_path(out_path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    LOG.info("reference for %d prompts in %.1f CPU s", len(kv_paths), float(meta["cpu_seconds"]))
    return meta


def load_reference(path: str | Path, stems: list[str], *, generate_tokens: int, batch_size: int,
                   dtype: str, device: str = "cpu") -> tuple[dict[str, Reference], float]:
    """The cached reference for ``stems``, checked against the settings the quality job uses."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise KVError(f"{path}: not a readable reference file ({exc})") from exc
    if meta.get("format") != REFERENCE_FORMAT:
        raise KVError(f"{path}: format {meta.get('format')!r}, expected {REFERENCE_FORMAT!r}")
    want = {"prompts": stems, "generate_tokens": generate_tokens, "batch_size": batch_size, "dtype": dtype,
            "device": device}
    have = {"prompts": json.loads(meta["prompts"]), "generate_tokens": int(meta["generate_tokens"]),
            "batch_size": int(meta["batch_size"]), "dtype": meta["dtype"], "device": meta.get("device", "cpu")}
    for key in want:
        if want[key] != have[key]:
            raise KVError(f"{path}: reference was made with {key}={have[key]!r}, this job uses {want[key]!r}; "
                          f"delete it to recompute")
    refs = {s: Reference(tensors[f"{s}.argmax"], tensors[f"{s}.ce"], tensors[f"{s}.greedy"],
                         tensors.get(f"{s}.attention")) for s in stems}
    return refs, float(meta["cpu_seconds"])


def score_codec(facts_path: str | Path, kv_manifests: KVManifests, wire_manifest: str | Path,
                out_path: str | Path, *, reference: str | Path | None = None, generate_tokens: int = 32,
                batch_size: int = 8, dtype: str = "float32", device: str = "cpu", model=None) -> dict:
    """Score one codec's wire files; ``reference`` is ``reference_for``'s file (None: compute it inline).
    ``model``: the already loaded model of ``facts_path`` (scoring several codecs in one process).

    ``dtype`` is what the model computes in, not what the cache is stored in: a bf16 cache scored by a
    bf16 forward pass flips near-tied argmaxes on one-ulp noise (token agreement 0.981 for one ulp of
    random noise on SmolLM2, as low as int8), which would hide every codec below 8 bits in the
    scoring noise; float32 scoring brings that floor to 0.997 (``bench/scoring_noise_floor.py``).
    """
    device = str(pick_device(device))
    if model is None:
        model = transpose_linears_for_cpu(load_model(Path(facts_path).parent, dtype=DTYPES[dtype], device=device)[0])
    elif next(model.parameters()).dtype != DTYPES[dtype]:
        raise KVError(f"the model given computes in {next(model.parameters()).dtype}, the scoring dtype is {dtype}")
    else:
        transpose_linears_for_cpu(model)  # as the reference job's model: comparisons stay exact
    kv_paths, wire_paths = kv_files(kv_manifests), wire_files(wire_manifest)
    if [p.stem for p in kv_paths] != [p.stem for p in wire_paths]:
        raise KVError(f"{wire_manifest} does not cover the same prompts as {kv_manifests}")
    wire_of = dict(zip([p.stem for p in kv_paths], zip(wire_paths, read_json(wire_manifest)["prompts"])))
    wire_meta = read_json(wire_manifest)
    refs, ref_cpu_s = (None, 0.0) if reference is None else load_reference(
        reference, [p.stem for p in kv_paths], generate_tokens=generate_tokens, batch_size=batch_size, dtype=dtype,
        device=device)
    # identity is the gate that shows re-injection is exact, so it always runs the forward; any other
    # codec whose decoded cache is bit-identical (the lossless ones) reuses the reference's outputs
    reuse_exact = wire_meta["codec"] != "identity"
    rows, reused, t0 = [], 0, time.process_time()
    wall0 = time.perf_counter()
    for batch in tqdm(kv_batches(kv_manifests, batch_size), desc=f"quality {wire_meta['codec_id']}", unit="batch"):
        records = [load_kv(p) for p in batch]
        for r, p in zip(records, batch):
            r.require_scoring_inputs(str(p))
        decoded = [wire.decode(wire_of[p.stem][0].read_bytes())[1] for p in batch]
        for group in group_by_shape(decoded):
            stems = [batch[i].stem for i in group]
            scored = score_batch(model, [records[i] for i in group], [decoded[i] for i in group], generate_tokens,
                                 None if refs is None else [refs[s] for s in stems], reuse_exact=reuse_exact)
            if reuse_exact and all(bit_identical(records[i].layers, decoded[i]) for i in group):
                reused += len(group)  # score_batch took these from the reference
            for i, row in zip(group, scored):
                entry = wire_of[batch[i].stem][1]
                row["dataset"] = records[i].meta.get("dataset")
                row["bin"] = records[i].seq_len
                row["wire_bytes"] = entry["wire_bytes"]
                row["raw_bytes"] = records[i].raw_bytes
                row["ratio"] = row["raw_bytes"] / row["wire_bytes"]
                rows.append(row)
    cpu_s, wall_s = time.process_time() - t0, time.perf_counter() - wall0
    summary = {m: sum(r[m] for r in rows) / len(rows) for m in METRICS + OPTIONAL_METRICS
               if all(m in r for r in rows)}
    result = {"codec_id": wire_meta["codec_id"], "codec": wire_meta["codec"], "params": wire_meta["params"],
              "n_prompts": len(rows), "ratio": wire_meta["ratio"], "generate_tokens": generate_tokens,
              "summary": summary, "rows": rows, "cpu_seconds": cpu_s, "wall_seconds": wall_s,
              "reference_cpu_seconds": ref_cpu_s, "bit_identical_prompts": reused,
              "cpu_seconds_per_prompt": cpu_s / len(rows)}
    LOG.info("%s: agreement %.4f, delta ce %.5f, ratio %.3f", wire_meta["codec_id"],
             summary["token_agreement"], summary["delta_ce"], wire_meta["ratio"])
    write_json(out_path, result)
    return result
