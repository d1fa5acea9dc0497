"""CPU reference speed of every codec: encode/decode MB/s (of raw KV bytes) on one real cache.

Usage:
    python bench/cpu_codecs.py --kv results/kv/smollm2-135m/pydocs/1024/p0000.safetensors
    python bench/cpu_codecs.py --random 30x3x1024x64      # a random bf16 cache of that shape

Each codec encodes the whole cache (every layer, framing and checksums included) ``--repeats``
times after a warm-up; the median is reported. Ratio is raw bytes / container bytes. The goal for
quantization codecs is >= 300 MB/s both ways on 2 cores (issue 3); entropy coding and SVD state
their numbers. Prints a table; ``--csv`` also writes it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

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
    parser.add_argument("--codecs", nargs="*", help="codec names (default: every tensor codec, and each + zstd/lz4)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--csv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.kv:
        record = load_kv(args.kv)
        layers, stats, source = record.layers, getattr(record, "stats", None) or None, args.kv
    else:
        layers, stats, source = random_cache(args.random), None, f"random bf16 {args.random}"
    raw = sum(layer.raw_bytes for layer in layers)
    names = args.codecs or sorted(TENSOR_CODECS) + sorted(BYTE_STAGES)
    print(f"# {source}: {len(layers)} layers, {raw / 1e6:.1f} MB raw, {args.threads} threads, "
          f"median of {args.repeats}")
    print(f"{'codec':<22}{'ratio':>8}{'enc MB/s':>11}{'dec MB/s':>11}")
    rows = []
    for name in names:
        try:
            codec = build(name)
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
