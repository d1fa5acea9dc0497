"""Stage: time a codec's encode and decode on the CPU, per layer, on real KV of every bin."""

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


def time_cpu(kv_manifests: list[str | Path], out_csv: str | Path, *, codec_id: str, codec_name: str,
             params: dict, repeats: int = 5, warmup: int = 1, timer: str = "pass") -> pd.DataFrame:
    codec = build(codec_name, params)
    frames = []
    for manifest_path in kv_manifests:
        manifest = read_json(manifest_path)
        record = load_kv(kv_files(manifest_path)[0])  # one real prompt per (dataset, bin): cost depends on shape
        cost, container = time_codec_cpu(codec, record.layers, repeats=repeats, warmup=warmup,
                                         stats=record.stats or None, timer=timer)
        frames.append(pd.DataFrame({
            "model": manifest["model"], "dataset": manifest["dataset"], "bin": manifest["prefix_tokens"],
            "codec": codec_id, "device": "cpu", "device_name": cpu_model(), "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""), "timer": timer,
            "layer": range(len(cost.wire_bytes)), "layer_raw_bytes": [layer.raw_bytes for layer in record.layers],
            "wire_bytes": cost.wire_bytes, "encode_s": cost.encode_s, "decode_s": cost.decode_s,
        }))
    table = pd.concat(frames, ignore_index=True)
    write_csv(out_csv, table)
    return table
