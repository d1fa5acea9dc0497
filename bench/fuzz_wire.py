"""The long run of the wire fuzzer that recomputes checksums (kvwire.fuzz; tests/test_hostile.py runs a
bounded one). Seeds: one container of every registered codec on a random bf16 cache; each mutant is
decoded under limits of 8 MB per cache. Prints the outcome counts, the mutations and any foreign
exception, and the process's peak RSS; writes them as JSON with --out.

    python bench/fuzz_wire.py --inputs 100000 --seed 1 --out results/fuzz/run1.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from kvwire import fuzz  # noqa: E402
from kvwire.codecs import LayerKV  # noqa: E402
from kvwire.limits import WireLimits  # noqa: E402


def seed_cache(layers: int = 3, heads: int = 2, seq: int = 48, dim: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    kv = [LayerKV(torch.randn(heads, seq, dim, generator=g).to(torch.bfloat16),
                  torch.randn(heads, seq, dim, generator=g).to(torch.bfloat16)) for _ in range(layers)]
    stats = [{"attn_sum": torch.rand(heads, seq, generator=g) * seq,
              "obs_attn": torch.softmax(torch.randn(heads, min(32, seq), seq, generator=g), dim=-1)} for _ in kv]
    return kv, stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", help="write the report here (JSON)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    kv, stats = seed_cache(seed=args.seed)
    seeds = fuzz.seed_containers(kv, stats)
    bar = tqdm(total=args.inputs, unit="input", mininterval=2.0)
    report = fuzz.run(seeds, args.inputs, seed=args.seed, limits=WireLimits(max_cache_bytes=8 << 20),
                      progress=lambda _k: bar.update(1))
    bar.close()
    result = {"inputs": report.inputs, "seed": args.seed, "codecs": sorted(seeds), "seconds": round(report.seconds, 1),
              "slowest_decode_s": round(report.slowest_s, 3), "outcomes": dict(report.outcomes.most_common()),
              "mutations": dict(report.by_mutation.most_common()), "foreign": report.foreign,
              "foreign_count": report.foreign_count,
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 1 if report.foreign_count else 0


if __name__ == "__main__":
    sys.exit(main())
