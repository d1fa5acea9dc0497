#!/usr/bin/env bash
# One device call for issue 27 (run on the lent GPU machine from the repository root; no network there):
# the real 2048-token caches of bench/scaling-caches.yaml, carried zstd-compressed in results/kvz/<model>/
# with the codec wheels in .whl/ (bench/NOTES.md: "CPU scaling and real-cache GPU timing"), then
#   1. every GPU kernel timed on those real caches and on synthetic caches of their shapes (bench/gpu_codecs.py --time-kv, bf16)
#   2. every codec's CPU times at 1, 2, 4, 8 and 16 threads on them (bench/cpu_scaling.py)
#   0. (call 2) the KVQuant kernels against the CPU codec on the real caches, section by section
#      (bench/kvquant_real_diff.py): the CPU codec's outlier ties now go to the lowest indices, as the kernel's
# SmolLM2's cache (xz, 53 MB) fits the 64 MiB carry only without the wheels and the other caches: on a
# machine kept warm after a first call (results/site installed), carry results/kvz/smollm2-135m alone with
# SHAPES=smollm2-135m. Writes $OUT/gpu_real.csv, $OUT/cpu_scaling.csv and $OUT/lscpu.txt (CPU times: the pass timer, as time_cpu's).
set -euo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
if [ -d .whl ] && [ ! -d results/site/zstandard ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target results/site \
    .whl/zstandard-*.whl .whl/lz4-*.whl .whl/constriction-*.whl 2>&1 | tail -2
fi
export PYTHONPATH=$PWD/results/site:$PWD/lib
lscpu > "$OUT/lscpu.txt"; echo "$(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo)"
kv=()
for z in results/kvz/*/*; do
  m=$(basename "$(dirname "$z")"); f=results/kvdev/$m/p0000.safetensors; mkdir -p "$(dirname "$f")"
  case "$z" in
    *.zst) [ -f "$f" ] || python3 -c "import sys, zstandard; open(sys.argv[2], 'wb').write(zstandard.ZstdDecompressor().decompress(open(sys.argv[1], 'rb').read(), max_output_size=1 << 28))" "$z" "$f" ;;
    *.xz) [ -f "$f" ] || python3 -c "import lzma, sys; open(sys.argv[2], 'wb').write(lzma.decompress(open(sys.argv[1], 'rb').read()))" "$z" "$f" ;;
  esac
  kv+=("$f")
done
echo "caches: ${kv[*]}"
if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  python3 bench/kvquant_real_diff.py "${kv[@]}" 2>&1 | tail -20 || true
  # the real caches, and the synthetic caches of the same shapes in the same run (same GPU, same clocks)
  python3 bench/gpu_codecs.py --out "$OUT/gpu_real.csv" --kv "${kv[@]}" --time-kv \
    --models ${SHAPES:-gemma-3-270m qwen2.5-coder-0.5b} --seqs 2048 --dtypes bfloat16 2>&1 | tail -60 || true
fi
# CPU_MODELS (space-separated model folder names) narrows the CPU scaling to those caches when a call's
# time is short; SKIP_CPU=1 skips it
[ "${SKIP_CPU:-0}" = 1 ] && exit 0
cpu_kv=()
for f in "${kv[@]}"; do
  m=$(basename "$(dirname "$f")")
  if [ -z "${CPU_MODELS:-}" ] || [[ " $CPU_MODELS " == *" $m "* ]]; then cpu_kv+=("$f"); fi
done
python3 bench/cpu_scaling.py --kv "${cpu_kv[@]}" --out "$OUT/cpu_scaling.csv" \
  --run "$(date -u +%F) lent GPU host, 2048-token WikiText-2 caches" 2>&1 | tail -120
