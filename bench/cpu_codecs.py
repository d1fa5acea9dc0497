"""CPU reference speed of every codec: encode/decode MB/s (of raw KV bytes) on one real cache.

Usage:
    snakemake --cores 2 results/kv/smollm2-135m/pydocs/1024/manifest.json --configfile bench/smollm2-1024.yaml
    python bench/cpu_codecs.py --kv results/kv/smollm2-135m/pydocs/1024/p0000.safetensors
    python bench/cpu_codecs.py --random 30x3x1024x64      # a random bf16 cache of that shape
    python bench/cpu_codecs.py --kv ... --omp-wait-policy ACTIVE   # OpenMP threads spin between ops

``--omp-wait-policy`` (default PASSIVE, what the workflow's jobs use) is set before torch loads
OpenMP: PASSIVE threads sleep between parallel regions, so every torch op pays a wake-up (tens of
microseconds), which is what a process sharing its cores with others should do; ACTIVE threads
spin, faster when the process owns the cores. The table header says which one ran.

Each codec encodes the whole cache (every layer, framing and checksums included) ``--repeats``
times after a warm-up; the median is reported. Ratio is raw bytes / container bytes. The goal for
quantization codecs is >= 300 MB/s both ways on 2 cores (issue 3); entropy coding and SVD state
their numbers. Prints a table; ``--csv`` also writes it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

if __name__ == "__main__":  # must precede the first torch import, which loads OpenMP
    for i, arg in enumerate(sys.argv):
        if arg == "--omp-wait-policy" and i + 1 < len(sys.argv):
            os.environ["OMP_WAIT_POLICY"] = sys.argv[i + 1].upper()
        elif arg.startswith("--omp-wait-policy="):
            os.environ["OMP_WAIT_POLICY"] = arg.split("=", 1)[1].upper()

import kvwire  # noqa: E402,F401  (first: sets OMP_WAIT_POLICY before torch loads OpenMP)
import torch  # noqa: E402
from kvwire import wire  # noqa: E402
from kvwire.codecs import LayerKV, build  # noqa: E402
from kvwire.codecs.registry import BYTE_STAGES, TENSOR_CODECS  # noqa: E402
from kvwire.errors import KvwireError  # noqa: E402
from kvwire.kv import load_kv  # noqa: E402


def random_cache(spec: str, seed: int = 0) -> list[LayerKV]:
    n_layers, heads, seq, dim = (int(x) for x in spec.split("x"))
    g = torch.Generator().manual_seed(seed)
    return [LayerKV(torch.randn(heads, seq, dim, generator=g).bfloat16(),
                    torch.randn(heads, seq, dim, generator=g).bfloat16()) for _ in range(n_layers)]


def median_seconds(fn, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kv", help="a kvwire KV file (real cache)")
    parser.add_argument("--random", default="30x3x1024x64", help="LxHxSxD of a random bf16 cache")
    parser.add_argument("--codecs", nargs="*", help="codec names (default: every registered codec, default params)")
    parser.add_argument("--config", help="bench the codec entries (ids, codecs, params) of this study config instead")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--omp-wait-policy", choices=["PASSIVE", "ACTIVE", "passive", "active"], default="PASSIVE",
                        help="OpenMP wait policy (applied before torch loads)")
    parser.add_argument("--csv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.kv:
        record = load_kv(args.kv)
        layers, stats, source = record.layers, getattr(record, "stats", None) or None, args.kv
    else:
        layers, stats, source = random_cache(args.random), None, f"random bf16 {args.random}"
    raw = sum(layer.raw_bytes for layer in layers)
    if args.config:
        import yaml
        from kvwire.config import codec_spec

        entries = yaml.safe_load(Path(args.config).read_text())["codecs"]
        specs = [(cid, *codec_spec(cid, entry)) for cid, entry in entries.items()]
    else:
        specs = [(n, n, {}) for n in (args.codecs or sorted(TENSOR_CODECS) + sorted(BYTE_STAGES))]
    print(f"# {source}: {len(layers)} layers, {raw / 1e6:.1f} MB raw, {args.threads} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, median of {args.repeats}")
    print(f"{'codec':<22}{'ratio':>8}{'enc MB/s':>11}{'dec MB/s':>11}")
    rows = []
    for name, codec_name, params in specs:
        try:
            codec = build(codec_name, params)
            data = wire.encode(codec, layers, stats=stats)
        except KvwireError as exc:
            print(f"{name:<22} skipped: {exc}")
            continue
        t_enc = median_seconds(lambda: wire.encode(codec, layers, stats=stats), args.repeats)
        t_dec = median_seconds(lambda: wire.decode(data), args.repeats)
        row = {"codec": name, "ratio": raw / len(data), "encode_mb_s": raw / t_enc / 1e6,
               "decode_mb_s": raw / t_dec / 1e6}
        rows.append(row)
        print(f"{name:<22}{row['ratio']:>8.3f}{row['encode_mb_s']:>11.1f}{row['decode_mb_s']:>11.1f}")
    if args.csv:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.csv, index=False, float_format="%.4g")
    return 0


if __name__ == "__main__":
    sys.exit(main())
