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
ap.add_argument("--repeats", type=int, default=3)
args = ap.parse_args()
manifests = sorted(glob.glob("results/offload/traces/*/manifest.json"))
if args.models:
    manifests = [m for m in manifests if Path(m).parent.name in args.models]
if not manifests:
    sys.exit("no traces under results/offload/traces/ (rule offload_trace records them)")
out = Path(args.out)
frame = gpu_study(manifests, OffloadSettings(repeats=args.repeats), out / f"{args.label}.csv",
                  out / f"{args.label}.calibration.json", label=args.label, log=lambda m: print(m, flush=True))
cols = ["model", "context", "mode", "ttft_ms", "tpot_p50_ms", "tpot_p99_ms", "hit_rate", "stall_pct",
        "prefetch_precision", "fetched_mib", "peak_gpu_mib", "pool_check_max_abs_err"]
print(frame[cols].to_string(index=False))
