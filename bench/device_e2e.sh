#!/usr/bin/env bash
# The end-to-end validation of issue 27 on a host with cores to spare (the lent GPU machine's 16):
# sender and receiver pinned to disjoint halves, so a codec thread and a socket thread do not share
# a core as they must on a 2-core VM. For each real cache carried in results/kvz/<model>/ (see
# bench/device_issue27.sh), bench/e2e_profile.py times every codec of the study with time_cpu's timer
# (the break-even's) and then sends the cache over loopback and, where this host can shape links (root,
# iproute2, tc), veth links at 1, 10 and 25 Gbps, comparing each measured time with the model fed that
# table. Writes $OUT/e2e_<model>.csv and $OUT/lscpu.txt.
set -euo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
REPEATS=${REPEATS:-3}
if [ -d .whl ] && [ ! -d results/site/zstandard ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target results/site \
    .whl/zstandard-*.whl .whl/lz4-*.whl .whl/constriction-*.whl 2>&1 | tail -2
fi
export PYTHONPATH=$PWD/results/site:$PWD/lib
lscpu > "$OUT/lscpu.txt"; echo "$(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo); user $(id -un)"
n=$(nproc); half=$((n / 2))
links="loopback"
if python3 -c "import sys; from kvwire import netlab; sys.exit(0 if netlab.can_shape() is None else 1)"; then
  links="loopback veth1 veth10 veth25"
else
  python3 -c "from kvwire import netlab; print('no shaped links here:', netlab.can_shape())"
fi
for z in results/kvz/*/*; do
  m=$(basename "$(dirname "$z")"); f=results/kvdev/$m/p0000.safetensors; mkdir -p "$(dirname "$f")"
  [ -f "$f" ] || python3 -c "import sys, zstandard; open(sys.argv[2], 'wb').write(zstandard.ZstdDecompressor().decompress(open(sys.argv[1], 'rb').read(), max_output_size=1 << 28))" "$z" "$f"
  python3 bench/e2e_profile.py "$f" --codecs all --links $links --repeats "$REPEATS" \
    --pin "0-$((half - 1))" "$half-$((n - 1))" --csv "$OUT/e2e_$m.csv" 2>&1 | tail -70
done
