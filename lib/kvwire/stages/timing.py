"""Stage: time a codec's encode and decode on the CPU, per layer, on real KV of every bin.

Token-selection codecs read attention statistics the prefill computed beside the cache. That work
is not in the codec's encode time, so the table states it: ``stats_keys`` names the statistics the
codec read (RoPE tables are model constants, not counted) and ``prefill_stats_s`` the seconds the
prefill spent computing them for the timed prompt (the extraction manifest's measurement; 0 when
the codec reads none). The break-even is solved both ways from it (``stages.transfer``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import torch

from ..codecs import build
from ..io import read_json, write_csv
from ..kv import load_kv
from ..timing import time_codec_cpu
from .extract import kv_files
from .runtime import cpu_model

ATTENTION_STATS = ("obs_attn", "attn_sum")  # what prefill_stats computes; RoPE tables come with the model


class _ReadKeys(dict):
    """A layer's statistics that note which keys the codec read."""

    def __init__(self, data, reads: set[str]) -> None:
        super().__init__(data)
        self._reads = reads

    def __getitem__(self, key):
        self._reads.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._reads.add(key)
        return super().get(key, default)


def time_cpu(kv_manifests: list[str | Path], out_csv: str | Path, *, codec_id: str, codec_name: str,
             params: dict, repeats: int = 5, warmup: int = 1, timer: str = "pass") -> pd.DataFrame:
    codec = build(codec_name, params)
    frames = []
    for manifest_path in kv_manifests:
        manifest = read_json(manifest_path)
        record = load_kv(kv_files(manifest_path)[0])  # one real prompt per (dataset, bin): cost depends on shape
        reads: set[str] = set()
        stats = [_ReadKeys(s, reads) for s in record.stats] if record.stats else None
        cost, container = time_codec_cpu(codec, record.layers, repeats=repeats, warmup=warmup,
                                         stats=stats, timer=timer)
        used = sorted(k for k in reads if k in ATTENTION_STATS)
        prompt = manifest["prompts"][0]
        stats_s = float(prompt.get("stats_seconds", 0.0)) if used else 0.0
        frames.append(pd.DataFrame({
            "model": manifest["model"], "dataset": manifest["dataset"], "bin": manifest["prefix_tokens"],
            "codec": codec_id, "device": "cpu", "device_name": cpu_model(), "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""), "timer": timer,
            "layer": range(len(cost.wire_bytes)), "layer_raw_bytes": [layer.raw_bytes for layer in record.layers],
            "wire_bytes": cost.wire_bytes, "encode_s": cost.encode_s, "decode_s": cost.decode_s,
            "stats_keys": "+".join(used), "prefill_stats_s": stats_s,
        }))
    table = pd.concat(frames, ignore_index=True)
    write_csv(out_csv, table)
    return table
