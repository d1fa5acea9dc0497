"""Where the KVQuant GPU kernel's payload differs from the CPU codec's on real KV files, section by section.

    python bench/kvquant_real_diff.py results/kvdev/*/p0000.safetensors [--codecs kvquant4 kvquant4_prerope]

For each file, codec and layer (one kernel call per group of equal layers, the wire container's
contexts): which payload sections differ (codes, offsets, ranges, codebook, outlier values, outlier
indices, for keys and values), how many outlier indices one side has that the other lacks, and the
conformance line of ``kernels.bench.check_record``. Needs a GPU; prints, never raises on a difference.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kvwire.codecs.base import unpack_sections  # noqa: E402
from kvwire.kernels.base import cache_group, layer_contexts  # noqa: E402
from kvwire.kernels.bench import _file_stats, bench_kernels, stack_groups  # noqa: E402
from kvwire.kernels.reference import _host_stats, conformance  # noqa: E402
from kvwire.codecs import LayerKV  # noqa: E402
from kvwire.kv import load_kv  # noqa: E402

NAMES = ["codes", "offsets", "ranges", "book", "outlier_values", "outlier_idx"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kv", nargs="+")
    ap.add_argument("--codecs", nargs="+", default=["kvquant4", "kvquant4_prerope"])
    ap.add_argument("--device", default="cuda", help="cuda, or cpu with TRITON_INTERPRET=1 (slow: small files)")
    a = ap.parse_args(argv)
    for path in a.kv:
        rec = load_kv(path)
        parts = stack_groups(rec.layers, rec.window_starts, _file_stats(rec), a.device)
        for label, kernel in bench_kernels(a.codecs):
            nparts = 13 if kernel.params.get("pre_rope") else 12
            total_diff = {}
            idx_only = 0
            for group, kv, stats in parts:
                with cache_group(group):
                    pay = kernel.encode(kv, stats)
                    conf = conformance(kernel, kv, stats, payloads=pay)
                    ctxs = layer_contexts(tuple(kv.shape), kv.dtype, _host_stats(stats))
                    for i in range(kv.shape[0]):
                        got = pay.layer(i).cpu().numpy().tobytes()
                        layer = kv[i].cpu()
                        want = kernel.codec.encode_layer(LayerKV(layer[0], layer[1]), ctxs[i])
                        if got == want:
                            continue
                        pg, pw = unpack_sections(got, nparts, label), unpack_sections(want, nparts, label)
                        for j in range(nparts):
                            if bytes(pg[j]) != bytes(pw[j]):
                                name = ("keys_" if j < 6 else "values_") + NAMES[j % 6] if j < 12 else "rope"
                                total_diff[name] = total_diff.get(name, 0) + 1
                                if j % 6 == 5 and j < 12 and len(pg[j]) == len(pw[j]):
                                    ig = set(np.frombuffer(bytes(pg[j]), "<i4").tolist())
                                    iw = set(np.frombuffer(bytes(pw[j]), "<i4").tolist())
                                    idx_only += len(ig ^ iw)
                print(f"{Path(path).parent.name} {label} group {getattr(group, 'layers', 'all')}: {conf}", flush=True)
            print(f"{Path(path).parent.name} {label}: layers with a differing section {total_diff or 'none'}; "
                  f"outlier indices on one side only: {idx_only}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
