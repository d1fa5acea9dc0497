"""Stage: prefill each prompt's prefix and store its KV cache (one safetensors file per prompt)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from ..errors import KVError
from ..io import read_json, write_json
from ..kv import KVRecord, prefill, prefill_stats, save_kv, trim_layers, trim_stats, window_starts
from ..models import load_model
from ..prompts import read_documents, select_prompts
from ..rope import rope_tables
from .device import DTYPES, pick_device
from .runtime import LOG


def extract_kv(facts_path: str | Path, docs_path: str | Path, manifest_path: str | Path, *,
               prefix_tokens: int, continuation: int, count: int, dtype: str = "bfloat16",
               device: str = "auto", batch_size: int = 4, attention_stats: bool | str = False,
               obs_window: int = 32, trim_windows: bool = True) -> dict:
    """Prefill every prompt and save its KV file; ``attention_stats`` also stores the per-layer attention
    statistics (``attn_sum``, ``obs_attn`` over the last ``obs_window`` queries) that H2O, SnapKV and
    PyramidKV need (``attention_stats="window"``: ``obs_attn`` only, enough for SnapKV and PyramidKV) -- the KV itself is bit-identical either way (see ``kvwire.kv.prefill_stats``).

    Sliding-window layers keep only the tokens decode reads (``trim_windows``; ``kvwire.kv.window_starts``:
    the last ``window - 1`` prefix tokens), with their statistics; each record's meta and the manifest
    say where every layer starts (``window_starts``), and ``raw_bytes`` counts the kept tokens.
    ``trim_windows=False`` stores the whole prefix on every layer (for before/after comparisons)."""
    facts = read_json(facts_path)
    model_dir = Path(facts_path).parent
    out_dir = Path(manifest_path).parent
    dev = pick_device(device)
    t0 = time.perf_counter()
    model, tokenizer = load_model(model_dir, dtype=DTYPES[dtype], device=str(dev))
    LOG.info("loaded %s in %.1fs on %s", facts.get("name", model_dir.name), time.perf_counter() - t0, dev)
    limit = facts.get("max_position_embeddings")
    if limit and prefix_tokens + continuation > int(limit):
        raise KVError(f"bin {prefix_tokens} + continuation {continuation} tokens exceed the context of "
                      f"{facts.get('name')} ({limit} positions)")
    # RoPE frequencies ride along as per-layer statistics: pre-RoPE codecs (KVQuant) un-rotate keys with them
    rope = rope_tables(model)
    if rope is None:
        LOG.warning("%s: no invertible RoPE found; pre-RoPE codecs will refuse its caches", facts.get("name"))
    prompts = select_prompts(read_documents(docs_path), tokenizer, prefix_tokens=prefix_tokens,
                             continuation_tokens=continuation, count=count)
    # the first prefix position any decode step reads, per layer (0 on full-attention layers)
    starts = window_starts(model, prefix_tokens) if trim_windows else None
    if starts is not None and not any(starts):
        starts = None  # nothing to trim: records and manifest exactly as without trimming
    if starts is not None:
        LOG.info("sliding-window layers keep %s of %d prefix tokens", sorted({prefix_tokens - s for s in starts}),
                 prefix_tokens)
    files, stats_seconds = [], 0.0
    t0 = time.perf_counter()
    for start in tqdm(range(0, len(prompts), batch_size), desc=f"prefill {prefix_tokens}", unit="batch"):
        batch = prompts[start:start + batch_size]
        ids = torch.tensor([p["prefix_ids"] for p in batch])
        timings: dict[str, float] = {}
        if attention_stats:
            layers, first, stats = prefill_stats(model, ids.to(model.device), obs_window=obs_window,
                                                 sums=attention_stats != "window", timings=timings)
            stats_seconds += timings["stats_seconds"]
        else:
            (layers, first), stats = prefill(model, ids.to(model.device)), None
        for j, prompt in enumerate(batch):
            name = f"{Path(docs_path).stem}-b{prefix_tokens}-p{start + j:04d}.safetensors"  # unique in a study
            kept, attention = layers[j], stats[j] if stats else None
            meta = {"model": facts.get("name"), "source": facts.get("source"),
                    "prompt_id": prompt["prompt_id"], "dataset": Path(docs_path).stem}
            if starts is not None:
                kept = trim_layers(kept, starts)
                attention = trim_stats(attention, starts) if attention else None
                meta["window_starts"] = list(starts)
            record = KVRecord(layers=kept, prefix_ids=ids[j],
                              continuation_ids=torch.tensor(prompt["continuation_ids"]),
                              first_token=int(first[j]), meta=meta,
                              stats=_layer_stats(attention, rope, len(kept)))
            save_kv(out_dir / name, record)
            entry = {"file": name, "prompt_id": prompt["prompt_id"], "raw_bytes": record.raw_bytes}
            if timings:  # the statistics' cost, this prompt's share of its batch's: token selection pays it
                # (kept out of the record's meta, which travels in the wire header: bytes stay reproducible)
                entry["stats_seconds"] = timings["stats_seconds"] / len(batch)
            files.append(entry)
    shape = list(layers[0][0].k.shape)  # a whole-prefix layer (before any trimming)
    manifest = {
        "model": facts.get("name"), "dataset": Path(docs_path).stem, "prefix_tokens": prefix_tokens,
        "continuation_tokens": continuation, "dtype": dtype, "device": str(dev),
        "n_layers": len(layers[0]), "layer_shape": shape, "layer_types": facts.get("layer_types"),
        "prompts": files, "prefill_seconds": time.perf_counter() - t0,
        "attention_stats": ({"obs_window": obs_window, "attn_sum": attention_stats != "window",
                             "seconds": stats_seconds, "device": str(dev), "threads": torch.get_num_threads()}
                            if attention_stats else None),
        "rope_stats": rope is not None,
    }
    if starts is not None:  # absent when no layer was trimmed: the manifest is as before
        manifest["window_starts"] = list(starts)
    write_json(manifest_path, manifest)  # written last: its presence means every KV file is complete
    return manifest


def _layer_stats(attention, rope, n_layers: int) -> list[dict]:
    """Per-layer statistics stored with a KV file: attention statistics (if extracted) plus RoPE tables."""
    out = [dict(attention[i]) if attention else {} for i in range(n_layers)]
    for i, table in enumerate(rope or []):
        out[i].update(table)
    return out if any(out) else []


def _manifests(manifest_paths: str | Path | Sequence[str | Path]) -> list[str | Path]:
    return [manifest_paths] if isinstance(manifest_paths, (str, Path)) else list(manifest_paths)


def kv_files(manifest_paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """The KV files of one extraction manifest, or of several (in the order given)."""
    return [path for m in _manifests(manifest_paths) for path in _files_of(m)]


def _files_of(manifest_path: str | Path) -> list[Path]:
    return [Path(manifest_path).parent / p["file"] for p in read_json(manifest_path)["prompts"]]


def kv_batches(manifest_paths: str | Path | Sequence[str | Path], batch_size: int) -> list[list[Path]]:
    """KV files in batches of at most ``batch_size`` that share one prefix length (bin), pooled across
    manifests (datasets): fewer, fuller batches make the sequential greedy steps cheaper. The
    reference and every codec's quality job use these same batches."""
    by_length: dict[int, list[Path]] = {}
    for manifest_path in _manifests(manifest_paths):
        by_length.setdefault(int(read_json(manifest_path)["prefix_tokens"]), []).extend(_files_of(manifest_path))
    return [files[i:i + batch_size] for _, files in sorted(by_length.items())
            for i in range(0, len(files), batch_size)]
