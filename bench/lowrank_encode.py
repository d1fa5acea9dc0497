"""Low-rank encode on the GPU: torch.linalg.svd (cuSOLVER) against the Gram-matrix eigendecomposition
and subspace iteration on the Gram matrix (``kernels/lowrank/kernel.py``'s ``FACTORIZE``), and the CPU codec on the same cache (issue 30).

For each shape: encode ms (CUDA events, median), GB/s (cache read + payload written), fraction of a
same-run copy, the reconstruction error's ratio to the CPU payload's (the codec's ``compare`` on the
first layer) and the CPU codec's encode time at the host's threads. Needs a CUDA device:

    python bench/lowrank_encode.py [--models smollm2-135m llama-3.1-8b] [--seqs 1024 2048]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

import torch  # noqa: E402

from kvwire.kernels.bench import MODEL_SHAPES  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", default=["smollm2-135m", "qwen2.5-coder-1.5b", "llama-3.1-8b"])
    ap.add_argument("--seqs", nargs="*", type=int, default=[1024, 2048])
    ap.add_argument("--codecs", nargs="*", default=["svd_runtime", "svd_runtime_int4"])
    ap.add_argument("--methods", nargs="*", default=["svd", "gram", "subspace"])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    from triton.testing import do_bench

    from kvwire.codecs.base import LayerContext
    from kvwire.codecs import LayerKV
    from kvwire.kernels import kernel_for
    from kvwire.kernels.bench import copy_bandwidth
    from kvwire.kernels.lowrank import kernel as lowrank

    copy = copy_bandwidth(do_bench)
    print(f"{torch.cuda.get_device_name()}: copy {copy:.0f} GB/s; CPU {torch.get_num_threads()} threads")
    print(f"{'model':20} {'seq':>5} {'codec':17} {'method':5} {'enc ms':>8} {'GB/s':>7} {'of copy':>7} "
          f"{'err/cpu':>7} {'cpu ms':>8} {'gpu/cpu':>7}")
    for model in args.models:
        layers, heads, dim = MODEL_SHAPES[model]
        for seq in args.seqs:
            g = torch.Generator(device="cuda").manual_seed(seq)
            kv = (torch.randn(layers, 2, heads, seq, dim, device="cuda", generator=g)
                  * torch.rand(layers, 2, heads, seq, 1, device="cuda", generator=g) * 4).to(torch.bfloat16)
            raw = kv.numel() * 2
            host0 = LayerKV(kv[0, 0].cpu(), kv[0, 1].cpu())
            for name in args.codecs:
                kernel = kernel_for(name)
                ctx = LayerContext(0, layers, torch.bfloat16, (heads, seq, dim))
                t0 = time.perf_counter()
                want = kernel.codec.encode_layer(host0, ctx)
                cpu_ms = (time.perf_counter() - t0) * 1e3 * layers  # one layer, times the layers
                for method in args.methods:
                    lowrank.FACTORIZE = method
                    pay = kernel.encode(kv, check=False)
                    ms = do_bench(lambda: kernel.encode(kv, check=False), warmup=5, rep=60, return_mode="median")
                    got = pay.layer(0).cpu().numpy().tobytes()
                    x = host0.k.double().flatten(1)
                    f32 = LayerContext(0, layers, torch.float32, (heads, seq, dim))
                    err_g = (x - kernel.codec.decode_layer(got, f32).k.double().flatten(1)).norm()
                    err_c = (x - kernel.codec.decode_layer(want, f32).k.double().flatten(1)).norm()
                    moved = raw + pay.nbytes
                    print(f"{model:20} {seq:5d} {name:17} {method:5} {ms:8.3f} {moved / ms / 1e6:7.1f} "
                          f"{moved / ms / 1e6 / copy:7.3f} {float(err_g / err_c):7.4f} {cpu_ms:8.1f} "
                          f"{cpu_ms / ms:7.1f}", flush=True)
            lowrank.FACTORIZE = "auto"
            del kv
    return 0


if __name__ == "__main__":
    sys.exit(main())
