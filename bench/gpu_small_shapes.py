"""At the study's cache sizes (one request: 4-64 MB), where does a GPU codec's time go? (issue 30)

For every codec setting of the bench with a kernel, on the study's model shapes at their study lengths:
- ``device``: the kernel's median time by CUDA events with the host racing ahead (``do_bench``), and
  the same for a device copy of the cache: what the tables report;
- ``host``: the host's microseconds per call, the GPU work not waited for (launch and Python overhead);
- ``graph``: the same encode / decode captured once in a CUDA graph and replayed (one launch, no
  Python), where the codec allows capture (no host sync inside: ``check=False``).
Prints a table and writes it as CSV:

    python bench/gpu_small_shapes.py --out $OUT/small_shapes.csv [--codecs int8 int4 ...] [--models ...]

``--once`` calls each encode and decode once, untimed (for Nsight Compute: a handful of launches);
``--models`` takes the study's models (their study length) or any bench shape (at ``--seq``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

import torch  # noqa: E402

from kvwire.kernels.bench import BENCH_CODECS, MODEL_SHAPES  # noqa: E402
from kvwire.kernels.launch import host_us  # noqa: E402  (host µs per call, not waiting for the GPU)

# the study's models at their study lengths (shapes: kernels.bench.MODEL_SHAPES)
STUDY = {m: (MODEL_SHAPES[m], seq) for m, seq in (("smollm2-135m", 1024), ("qwen2.5-coder-0.5b", 2048),
                                                   ("gemma-3-270m", 512), ("qwen2.5-coder-1.5b", 2048))}


def graphed(fn):
    """(``fn`` replayed from a CUDA graph, "") or (None, why) where it cannot be captured (it waits for the
    host inside): ``kernels.graph.GraphedCall``."""
    from kvwire.errors import CodecError
    from kvwire.kernels.graph import GraphedCall

    try:
        return GraphedCall(fn, cuda=True, what="the call"), ""
    except CodecError as exc:
        return None, str(exc)[:100]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--codecs", nargs="*", default=None)
    ap.add_argument("--models", nargs="*", default=None, choices=sorted(set(STUDY) | set(MODEL_SHAPES)))
    ap.add_argument("--seq", type=int, default=8192, help="length for --models outside the study's")
    ap.add_argument("--once", action="store_true", help="one untimed call per encode / decode (for ncu)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    import pandas as pd
    from triton.testing import do_bench

    from kvwire.kernels import kernel_for, supported

    rows = []
    gpu = torch.cuda.get_device_name()
    cases = {m: STUDY.get(m, (MODEL_SHAPES.get(m), args.seq)) for m in (args.models or STUDY)}
    for model, ((layers, heads, dim), seq) in cases.items():
        kv = torch.randn(layers, 2, heads, seq, dim, device="cuda").to(torch.bfloat16)
        raw = kv.numel() * 2
        dst = torch.empty_like(kv)
        copy_ms = do_bench(lambda: dst.copy_(kv), warmup=25, rep=100, return_mode="median")
        copy_host = host_us(lambda: dst.copy_(kv))
        for label, (name, params) in BENCH_CODECS.items():
            if args.codecs and label not in args.codecs or not supported(name, params):
                continue
            try:
                k = kernel_for(name, params)
                if k.needs_stats:
                    continue  # the selection codecs need attention statistics: timed by the bench proper
                pay = k.encode(kv)
                enc = lambda: k.encode(kv, check=False)  # noqa: E731
                dec = lambda: k.decode(pay, tuple(kv.shape), kv.dtype, check=False)  # noqa: E731
                moved_e = raw + pay.nbytes
                if args.once:  # ncu ... --nvtx --nvtx-include "codec/": only these launches
                    torch.cuda.synchronize()
                    torch.cuda.nvtx.range_push("codec")
                    enc(), dec()
                    torch.cuda.nvtx.range_pop()
                    torch.cuda.synchronize()
                    print(f"{model} {label}: encode and decode called once", flush=True)
                    continue
                for op, fn in (("encode", enc), ("decode", dec)):
                    ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
                    h = host_us(fn)
                    replay, why = graphed(fn)
                    g_ms = do_bench(replay, warmup=25, rep=100, return_mode="median") if replay else float("nan")
                    rows.append({"gpu": gpu, "model": model, "seq": seq, "codec": label, "op": op, "raw_mb": raw / 1e6,
                                 "device_ms": ms, "host_us": h, "graph_ms": g_ms, "copy_ms": copy_ms,
                                 "copy_host_us": copy_host, "frac_copy": (moved_e / ms) / (2 * raw / copy_ms),
                                 "frac_copy_graph": (moved_e / g_ms) / (2 * raw / copy_ms), "graph_note": why})
                    r = rows[-1]
                    print(f"{model:20} {label:14} {op:6} {raw / 1e6:6.1f} MB  dev {ms * 1e3:8.1f} us  host "
                          f"{h:7.1f} us  graph {g_ms * 1e3:8.1f} us  copy {copy_ms * 1e3:6.1f} us  "
                          f"frac {r['frac_copy']:.2f} -> {r['frac_copy_graph']:.2f} {why}", flush=True)
            except Exception as exc:  # noqa: BLE001  report and go on: one codec must not hide the rest
                print(f"{model} {label}: {type(exc).__name__}: {exc}", flush=True)
    pd.DataFrame(rows).to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
