#!/usr/bin/env bash
# One device call for issue 30 (run on the lent GPU machine from the repository root; no network there).
# Carried: .whl/ (zstandard, lz4, constriction wheels for the CPU codecs), .kvz/ (real caches, zstd:
# SmolLM2-135M at 1024 tokens, Qwen2.5-Coder-0.5B at 2048) and, when an earlier call brought it back,
# .triton-cache/ (compiled kernels: same Triton, same sm_90 on H100 and H200, so no recompiling).
#   1. bench/gpu_codecs.py --study: every kernel on the real caches and on issue 30's cases (the study's
#      cache sizes, then two of >= 64 MB), bf16; plain calls, CUDA-graph replays, eager; host us per call
#   2. (unless SKIP_LOWRANK=1) low-rank encode: SVD against the Gram eigendecomposition (bench/lowrank_encode.py)
#   3. kernel variants A/B (bench/gpu_variants.py: token row tiles, one-launch per-channel encode); with
#      SWEEP=1 also the per-token kernels' layout x tile x warps sweep on a 0.5 GB cache
#   4. (unless SKIP_NCU=1) Nsight Compute on the kernels issue 30 names as furthest from copy speed
# Writes $OUT/$LABEL.csv, $OUT/run.log, $OUT/lowrank.log, $OUT/variants.log, $OUT/sweep.log, $OUT/ncu.txt and $OUT/triton-cache.tgz.
# LABEL (h100 / h200) must name the device; STUDY_S bounds step 1 (the table is written after every shape).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
LABEL=${LABEL:-h100}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/lib PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.triton-cache
mkdir -p "$TRITON_CACHE_DIR" /tmp/kv
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv | tee "$OUT/gpu.txt"
kv=()
for z in $([ "${NO_KV:-0}" = 1 ] || ls .kvz/*.zst); do
  f=/tmp/kv/$(basename "${z%.zst}")
  python3 -c "import sys, zstandard; open(sys.argv[2], 'wb').write(zstandard.ZstdDecompressor().decompress(open(sys.argv[1], 'rb').read(), max_output_size=1 << 28))" "$z" "$f"
  kv+=("$f")
done
echo "real caches: ${kv[*]}"
[ ${#kv[@]} -gt 0 ] && kvargs=(--kv "${kv[@]}" --time-kv) || kvargs=()
timeout "${STUDY_S:-360}" python3 bench/gpu_codecs.py --out "$OUT/$LABEL.csv" --study --dtypes bfloat16 \
  --rep-ms "${REP_MS:-25}" --cpu-check-seq 1024 "${kvargs[@]}" ${CODECS:+--codecs $CODECS} \
  ${CASES:+--cases $CASES} 2>&1 | tee "$OUT/run.log" | tail -80
if [ "${SKIP_LOWRANK:-0}" != 1 ]; then
  timeout "${LOWRANK_S:-45}" python3 bench/lowrank_encode.py ${LOWRANK_ARGS:-} 2>&1 | tee "$OUT/lowrank.log" | tail -20
fi
timeout "${VARIANTS_S:-90}" python3 bench/gpu_variants.py ${VARIANT_SHAPES:+--shapes $VARIANT_SHAPES} 2>&1 | tee "$OUT/variants.log" | tail -50
if [ "${SWEEP:-0}" = 1 ]; then
  timeout "${SWEEP_S:-90}" python3 bench/gpu_codecs.py --out /tmp/sweep.csv --sweep 2>&1 | tee "$OUT/sweep.log" | tail -50
fi
if [ "${SKIP_NCU:-0}" != 1 ]; then
  timeout "${NCU_S:-90}" ncu --clock-control none --nvtx --nvtx-include "codec/" \
    --launch-count "${NCU_COUNT:-40}" --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
    python3 bench/gpu_small_shapes.py --out /tmp/small.csv --codecs ${NCU_CODECS:-int4 int8_channel kivi2 kvquant4} \
    --models llama-3.1-8b --once > "$OUT/ncu.txt" 2>&1
  grep -E "==PROF==|==ERROR==|Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|^  [A-Za-z_0-9]+ \(" "$OUT/ncu.txt" | head -150
fi
tar czf "$OUT/triton-cache.tgz" .triton-cache 2>/dev/null && ls -la "$OUT"
