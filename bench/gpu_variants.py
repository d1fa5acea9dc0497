"""A/B timing of kernel variants selected by module knobs, in one run on one GPU (issue 30's method:
predict, change, measure both in the same run against the same copy).

For each variant set below, each codec and each shape: encode and decode median ms (CUDA events,
``do_bench``, L2 flushed), fraction of a same-run copy, and whether every variant wrote the same payload
bytes and decoded the same tensor as the first (the knobs change speed, never bytes):

    python bench/gpu_variants.py [--sets token_layout channel_fused] [--shapes smollm2-135m:1024 ...]
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

import torch  # noqa: E402

from kvwire.kernels.bench import BENCH_CODECS, MODEL_SHAPES  # noqa: E402

# set -> (module, {label: {attribute: value}}, bench codec labels)
SETS = {
    "token_layout": ("kvwire.kernels.token.kernel", {"words": {"LAYOUT": "words"}, "flat": {"LAYOUT": "flat"}},
                     ("int8", "int4", "fp8_e4m3")),
    "channel_fused": ("kvwire.kernels.granular.kernel",
                      {"three launches": {"CHANNEL_FUSED": False},
                       "fused 4w": {"CHANNEL_FUSED": True, "NUM_WARPS": {"channel_fused": 4}},
                       "fused 8w": {"CHANNEL_FUSED": True, "NUM_WARPS": {"channel_fused": 8}},
                       "fused 16w": {"CHANNEL_FUSED": True, "NUM_WARPS": {"channel_fused": 16}}},
                      ("int8_channel", "int4_channel")),
    "flat_decode": ("kvwire.kernels.granular.kernel", {"word tiles": {"FLAT_DECODE": False},
                                                       "flat rows": {"FLAT_DECODE": True}},
                    ("int8_channel", "int4_channel", "fp8_e5m2")),
}
SHAPES = ("smollm2-135m:1024", "qwen2.5-coder-1.5b:2048", "llama-3.1-8b:2048")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SETS))
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES), help="model:seq")
    ap.add_argument("--rep-ms", type=int, default=40)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    from triton.testing import do_bench

    from kvwire.kernels import kernel_for

    bad = 0
    print(f"{torch.cuda.get_device_name()}")
    print(f"{'set':13} {'variant':15} {'codec':13} {'shape':26} {'MB':>6} {'enc us':>8} {'frac':>5} "
          f"{'dec us':>8} {'frac':>5} same")
    for spec in args.shapes:
        model, seq = spec.split(":")
        layers, heads, dim = MODEL_SHAPES[model]
        shape = (layers, 2, heads, int(seq), dim)
        g = torch.Generator(device="cuda").manual_seed(7)
        bufs = [(torch.randn(shape, device="cuda", generator=g) * torch.rand(shape[:-1] + (1,), device="cuda",
                                                                            generator=g) * 4).to(torch.bfloat16)
                for _ in range(max(1, min(8, (200 << 20) // (2 * torch.Size(shape).numel()))))]
        raw = bufs[0].numel() * 2
        dst = torch.empty_like(bufs[0])
        copy_ms = do_bench(lambda: dst.copy_(bufs[0]), warmup=10, rep=args.rep_ms, return_mode="median")
        for set_name in args.sets:
            module, variants, labels = SETS[set_name]
            mod = importlib.import_module(module)
            saved = {k: getattr(mod, k) for v in variants.values() for k in v}
            for label in labels:
                kernel = kernel_for(*BENCH_CODECS[label])
                first = None
                for vname, knobs in variants.items():
                    for k, v in knobs.items():
                        setattr(mod, k, {**saved[k], **v} if isinstance(v, dict) else v)
                    try:
                        pays = [kernel.encode(b, check=False) for b in bufs]
                        dec = kernel.decode(pays[0], shape, torch.bfloat16, check=False)
                        same = True if first is None else (torch.equal(first[0], pays[0].data)
                                                           and torch.equal(first[1], dec))
                        first = first or (pays[0].data.clone(), dec.clone())
                        turn = {"i": 0}

                        def nxt():
                            turn["i"] = (turn["i"] + 1) % len(bufs)
                            return turn["i"]

                        e = do_bench(lambda: kernel.encode(bufs[nxt()], check=False), warmup=10, rep=args.rep_ms,
                                     return_mode="median")
                        d = do_bench(lambda: kernel.decode(pays[nxt()], shape, torch.bfloat16, check=False),
                                     warmup=10, rep=args.rep_ms, return_mode="median")
                        moved = raw + pays[0].nbytes
                        frac = moved / (2 * raw / copy_ms)
                        bad += not same
                        print(f"{set_name:13} {vname:15} {label:13} {spec:26} {raw / 1e6:6.1f} {e * 1e3:8.1f} "
                              f"{frac / e:5.2f} {d * 1e3:8.1f} {frac / d:5.2f} {same}", flush=True)
                    except Exception as exc:  # noqa: BLE001  one variant failing must not hide the others
                        bad += 1
                        print(f"{set_name:13} {vname:15} {label:13} {spec:26} {type(exc).__name__}: {exc}", flush=True)
                    finally:
                        for k, v in saved.items():
                            setattr(mod, k, v)
        del bufs, dst
        torch.cuda.empty_cache()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
