"""GPU codec benchmark: fused Triton kernels vs the eager-PyTorch baseline vs a device copy.

The checks and timings are ``kvwire.kernels.bench``, its files ``kvwire.stages.gpu_bench`` (what the
rule ``time_gpu`` runs); this script adds ``--sweep`` (launch tuning) and ``--quick``.

    python bench/gpu_codecs.py --out results/timing/gpu/h200.csv [--kv some.safetensors] [--quick]

Prints a table last; ``--kv`` adds real caches (kvwire KV files) to the correctness check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

import torch  # noqa: E402

from kvwire.kernels.bench import BENCH_CODECS, ISSUE30_CASES, MODEL_SHAPES, SEQS  # noqa: E402



def sweep(do_bench, kernels, copy_gbps) -> int:
    """Row-tile layout x tile (elements per program) x warps on Llama-3.1-8B at 4096 tokens (0.5 GB), bf16."""
    shape = (32, 2, 8, 4096, 128)
    kv = torch.randn(shape, device="cuda").to(torch.bfloat16)
    raw = kv.numel() * 2
    print(f"{'codec':9} {'layout':6} {'tile':>6} {'warps':>5} {'enc ms':>7} {'enc/copy':>8} {'dec ms':>7} {'dec/copy':>8}")
    for name in kernels.TokenQuantKernel.names:  # the per-token kernels, whose launch defaults are TILE / NUM_WARPS
        payload = kernels.encode_cache(name, kv)
        out = torch.empty_like(payload)
        dec = torch.empty_like(kv)
        moved = raw + payload.numel()
        flat = kernels.encode_cache(name, kv, layout="flat")
        same_dec = torch.equal(kernels.decode_cache(name, payload, shape, kv.dtype, layout="flat"),
                               kernels.decode_cache(name, payload, shape, kv.dtype, layout="words"))
        print(f"{name}: flat payload identical to the word tiles' {torch.equal(flat, payload)}, decode {same_dec}")
        for layout in ("words", "flat"):
            for tile in (1024, 2048, 4096, 8192):
                for warps in (1, 2, 4, 8):
                    if tile // 128 < warps:  # fewer rows than warps: a warp with nothing to do
                        continue
                    e = do_bench(lambda: kernels.encode_cache(name, kv, out=out, check=False, tile=tile,
                                                              num_warps=warps, layout=layout),
                                 warmup=10, rep=40, return_mode="median")
                    d = do_bench(lambda: kernels.decode_cache(name, payload, shape, kv.dtype, out=dec, check=False,
                                                              tile=tile, num_warps=warps, layout=layout),
                                 warmup=10, rep=40, return_mode="median")
                    print(f"{name:9} {layout:6} {tile:6d} {warps:5d} {e:7.3f} {moved / e / 1e6 / copy_gbps:8.2f} "
                          f"{d:7.3f} {moved / d / 1e6 / copy_gbps:8.2f}", flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--kv", type=Path, nargs="*", default=[], help="real KV files to check the kernels on")
    ap.add_argument("--time-kv", action="store_true",
                    help="also time the kernels on the --kv caches (rows whose `cache` names the file)")
    ap.add_argument("--quick", action="store_true", help="three models, two lengths")
    ap.add_argument("--study", action="store_true",
                    help="issue 30's cases: the study's cache sizes and two large caches (ISSUE30_CASES)")
    ap.add_argument("--cases", nargs="*", default=None, metavar="MODEL:SEQ", help="these (model, seq) cases only")
    ap.add_argument("--sweep", action="store_true", help="time tile sizes and warps on one large shape, then stop")
    ap.add_argument("--codecs", nargs="*", default=None, choices=list(BENCH_CODECS), metavar="LABEL",
                    help="bench codec labels (default: every one with a kernel)")
    ap.add_argument("--models", nargs="*", default=None, choices=list(MODEL_SHAPES), metavar="MODEL")
    ap.add_argument("--seqs", nargs="*", type=int, default=None)
    ap.add_argument("--dtypes", nargs="*", default=["bfloat16", "float16"])
    ap.add_argument("--nvcomp", type=Path, default=None, metavar="CSV",
                    help="also time nvCOMP after each codec on the --kv caches' payloads, into this table")
    ap.add_argument("--rep-ms", type=int, default=100, help="do_bench repetition time per measurement")
    ap.add_argument("--cpu-check-seq", type=int, default=2048,
                    help="longest synthetic cache checked against the CPU codec (longer: against eager)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to time (the kernels' logic is tested on CPU by tests/test_kernels.py)")
        return 2
    from kvwire.kernels.token import kernel as token_kernels
    from kvwire.kernels.bench import copy_bandwidth, summary
    from kvwire.stages.gpu_bench import time_gpu

    if args.sweep:
        from triton.testing import do_bench

        return sweep(do_bench, token_kernels, copy_bandwidth(do_bench))
    models = dict(list(MODEL_SHAPES.items())[:2] + list(MODEL_SHAPES.items())[-1:]) if args.quick else MODEL_SHAPES
    if args.models is not None:  # `--models` alone: no synthetic shapes (with --time-kv: the real caches only)
        models = {m: MODEL_SHAPES[m] for m in args.models}
    seqs = args.seqs or ((512, 8192) if args.quick else SEQS)
    cases = [(c.split(":")[0], int(c.split(":")[1])) for c in args.cases] if args.cases else (
        ISSUE30_CASES if args.study else None)
    table = time_gpu(args.out, models=models, seqs=seqs, dtypes=args.dtypes, codecs=args.codecs, kv_files=args.kv,
                     time_kv_files=args.time_kv, rep_ms=args.rep_ms, log=lambda line: print(line, flush=True),
                     cases=cases, cpu_check_seq=args.cpu_check_seq)
    print()
    print(summary(table))
    if args.nvcomp:
        from triton.testing import do_bench

        from kvwire.io import write_csv
        from kvwire.kernels.bench import require_gpu
        from kvwire.stages.gpu_bench import time_nvcomp

        table = time_nvcomp(do_bench, args.kv, args.codecs, gpu=require_gpu(), log=lambda line: print(line, flush=True))
        write_csv(args.nvcomp, table)
    return 1 if (table[table.impl == "triton"].conformant == False).any() else 0  # noqa: E712  None: unchecked


if __name__ == "__main__":
    sys.exit(main())
