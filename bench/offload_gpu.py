"""Device run of the offload study (#10): replay every carried trace x mode on this GPU, check the
pool against the host store, time with CUDA events; writes the run table and the calibration.

    python3 bench/offload_gpu.py --label h200 --out $OUT   (traces: results/offload/traces/*/manifest.json)
"""
import argparse
import glob
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lib"))

from kvwire.offload.experiment import OffloadSettings  # noqa: E402
from kvwire.stages.offload import gpu_study  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--label", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--models", nargs="*", default=None)
ap.add_argument("--repeats", type=int, default=OffloadSettings().repeats)
ap.add_argument("--stories", default=None, help="the tiny real Llama's directory: record its trace on this GPU too")
args = ap.parse_args()
manifests = sorted(glob.glob("results/offload/traces/*/manifest.json"))
out = Path(args.out)
if args.stories:  # end to end on the GPU: the real model runs here, its trace is recorded and replayed here
    import torch
    from transformers import AutoModelForCausalLM

    from kvwire.io import write_json
    from kvwire.offload import record_trace

    model = AutoModelForCausalLM.from_pretrained(args.stories, dtype=torch.float32).cuda().eval()
    bos = torch.tensor([[model.config.bos_token_id]], device="cuda")  # its own story: greedy from BOS
    ids = model.generate(bos, max_new_tokens=479, do_sample=False, min_new_tokens=479)[0].cpu()
    trace = record_trace(model, "stories260K", ids, 16, chunk=128)
    trace.save(out / "stories" / "ctx480.npz")
    write_json(out / "stories" / "manifest.json", {"model": "stories260K", "traces": [{"context": 480, "file": "ctx480.npz"}]})
    small = OffloadSettings(contexts=(480,), decode_tokens=16, page_size=16, budget_tokens=64, prefetch_tokens=128,
                            gpu_tokens=128, repeats=args.repeats)
    gpu_study([out / "stories" / "manifest.json"], small, out / f"{args.label}.stories.csv",
              out / f"{args.label}.stories.calibration.json", label=args.label, log=lambda m: print(m, flush=True))
    del model
if args.models:
    manifests = [m for m in manifests if Path(m).parent.name in args.models]
if not manifests:
    sys.exit("no traces under results/offload/traces/ (rule offload_trace records them)")
frame = gpu_study(manifests, OffloadSettings(repeats=args.repeats), out / f"{args.label}.csv",
                  out / f"{args.label}.calibration.json", label=args.label, log=lambda m: print(m, flush=True))
cols = ["model", "context", "mode", "ttft_ms", "ttft_min_ms", "ttft_max_ms", "ttft_host_ms", "tpot_p50_ms",
        "tpot_p99_ms", "hit_rate", "stall_pct", "prefetch_precision", "fetched_mib", "peak_gpu_mib", "pool_check_max_abs_err"]
print(frame[cols].to_string(index=False))
