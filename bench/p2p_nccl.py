"""Issue 11: the measured prefill -> decode transfer between two ranks, per codec, against raw.

    python3 bench/p2p_nccl.py --backend nccl --out results/p2p/h200x2.csv    # 2 GPUs of one host
    python3 bench/p2p_nccl.py --backend gloo --out /tmp/p2p-cpu.csv          # 2 CPU processes (loopback)

Each codec is sent pipelined (layer i+1 encodes while layer i is in flight, decode of layer i while
i+1 lands) and sequentially, ``--repeats`` times after a warm-up; rank 1 checks the decoded cache
against the CPU codec's decoding of the same cache (exact bytes) and writes the medians. NCCL runs
with NVLink multicast off (kvwire.p2p.NCCL_ENV).
"""
import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lib"))

# the real models' caches: (layers, kv heads, head_dim); seq from --seq
SHAPES = {"smollm2-135m": (30, 3, 64), "gemma3-270m": (18, 1, 256)}


def worker(rank, args, init_method, queue):
    from kvwire import p2p

    p2p.init(rank, 2, args.backend, init_method)
    device = f"cuda:{rank}" if args.backend == "nccl" else "cpu"
    rows = []
    for model, (layers, heads, dim) in SHAPES.items():
        shape = (layers, 2, heads, args.seq, dim)
        g = torch.Generator().manual_seed(0)
        kv = (torch.randn(shape, generator=g) * 2).to(torch.bfloat16)
        for codec in args.codecs:
            for pipelined in (True, False):
                res = p2p.transfer(rank, kv.to(device) if rank == 0 else None, shape, torch.bfloat16, codec,
                                   pipelined=pipelined, device=device, repeats=args.repeats)
                if rank == 1:
                    got = p2p.transfer.last.cpu()
                    if codec == "identity":
                        ok = torch.equal(got, kv)
                    else:
                        from kvwire.kernels.reference import decode_cache_reference, encode_cache_reference

                        want = decode_cache_reference(codec, encode_cache_reference(codec, kv), shape, torch.bfloat16)
                        ok = torch.equal(got, want)
                    sec = statistics.median(r.seconds for r in res)
                    rows.append({"backend": args.backend, "model": model, "seq": args.seq, "codec": codec,
                                 "pipelined": pipelined, "raw_bytes": res[0].raw_bytes, "wire_bytes": res[0].wire_bytes,
                                 "seconds": sec, "effective_gbps": res[0].raw_bytes * 8 / sec / 1e9,
                                 "matches_cpu_codec": ok})
                    print(rows[-1], flush=True)
    if rank == 1:
        queue.put(rows)
    torch.distributed.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", choices=["nccl", "gloo"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--codecs", nargs="+", default=["identity", "int8", "int4", "fp8_e4m3"])
    args = ap.parse_args()
    if args.backend == "nccl" and torch.cuda.device_count() < 2:
        sys.exit(f"NCCL needs 2 GPUs on this host, found {torch.cuda.device_count()}")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=worker, args=(r, args, f"file://{tmp}/store", queue)) for r in range(2)]
        for p in procs:
            p.start()
        rows = queue.get()
        for p in procs:
            p.join()
    import pandas as pd

    from kvwire.io import write_csv

    frame = pd.DataFrame(rows)
    raw = frame[frame["codec"] == "identity"].set_index(["model", "pipelined"])["seconds"]
    frame["speedup_vs_raw"] = [raw[(m, p)] / s for m, p, s in zip(frame["model"], frame["pipelined"], frame["seconds"])]
    write_csv(args.out, frame)
    print(frame.to_string(index=False))


if __name__ == "__main__":
    main()
