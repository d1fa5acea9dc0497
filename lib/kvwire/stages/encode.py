"""Stage: encode every prompt's KV file into a real wire container with one codec."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from .. import wire
from ..codecs import build
from ..io import read_json, write_bytes, write_json
from ..kv import load_kv
from .extract import kv_files


def encode_prompts(kv_manifests: str | Path | Sequence[str | Path], manifest_path: str | Path, *, codec_id: str,
                   codec_name: str, params: dict) -> dict:
    """Encode the KV files of one or several extraction manifests (e.g. every length bin of a dataset)."""
    codec = build(codec_name, params)
    out_dir = Path(manifest_path).parent
    rows = []
    for path in tqdm(kv_files(kv_manifests), desc=f"encode {codec_id}", unit="prompt"):
        record = load_kv(path)
        # attention statistics (when extracted) feed the token-selection codecs; others ignore them
        data = wire.encode(codec, record.layers, dict(record.meta, prefix_len=record.seq_len),
                           stats=record.stats or None)
        name = path.with_suffix(".kvw").name
        write_bytes(out_dir / name, data)
        rows.append({"file": name, "prompt_id": record.meta.get("prompt_id"), "raw_bytes": record.raw_bytes,
                     "wire_bytes": len(data), "ratio": record.raw_bytes / len(data), "bin": record.seq_len})
    manifest = {"codec_id": codec_id, "codec": codec.name, "params": codec.params,
                "kv_manifests": [str(m) for m in ([kv_manifests] if isinstance(kv_manifests, (str, Path))
                                                   else kv_manifests)], "prompts": rows,
                "raw_bytes": sum(r["raw_bytes"] for r in rows), "wire_bytes": sum(r["wire_bytes"] for r in rows)}
    manifest["ratio"] = manifest["raw_bytes"] / manifest["wire_bytes"]
    write_json(manifest_path, manifest)
    return manifest


def wire_files(manifest_path: str | Path) -> list[Path]:
    manifest = read_json(manifest_path)
    return [Path(manifest_path).parent / p["file"] for p in manifest["prompts"]]
