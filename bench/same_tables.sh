#!/usr/bin/env bash
# Does a refactor leave the study's tables unchanged? Runs the smoke study (config/smoke.yaml) at BASE and at
# HEAD, each in its own worktree, then reruns HEAD's downstream rules on BASE's CPU timing tables (timings
# differ run to run; what follows from them must not), and compares every table byte for byte.
#   bash bench/same_tables.sh BASE [HEAD]     (about 15 minutes on 2 cores)
set -euo pipefail
base=${1:?usage: same_tables.sh BASE [HEAD]}
head=${2:-HEAD}
work=$(mktemp -d)
repo=$(git rev-parse --show-toplevel)
for side in base head; do
  rev=$([ $side = base ] && echo "$base" || echo "$head")
  git -C "$repo" worktree add -q --detach "$work/$side" "$rev"
  (cd "$work/$side" && snakemake all --cores 2 --configfile config/smoke.yaml > "$work/$side.log" 2>&1)
done
for m in "$work"/base/results/timing/cpu/*/; do cp "$m"*.csv "$work/head/results/timing/cpu/$(basename "$m")/"; done
(cd "$work/head" && snakemake all --cores 2 --configfile config/smoke.yaml > "$work/head.rerun.log" 2>&1)
for f in $(cd "$work/base/results/tables" && ls); do
  if cmp -s "$work/base/results/tables/$f" "$work/head/results/tables/$f"; then echo "same     $f"; else echo "DIFFERS  $f"; fi
done
echo "worktrees in $work (git worktree remove them when done)"
