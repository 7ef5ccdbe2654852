#!/usr/bin/env bash
# Replay speed of `kleakd report`: writes a synthetic recording of RECORDS
# records (default 20M) and times the report over it, best of 3.
# Usage: bench/replay.sh [RECORDS]   (after scripts/build.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-20000000}
build=${BUILD_DIR:-build}
dir=$(mktemp -d /tmp/kleakd-replay-XXXXXX)
trap 'rm -rf "$dir"' EXIT
"$build/bench/kleakd-make-recording" "$dir/rec" "$records"
echo "recording: $records records, $(du -sh "$dir/rec" | cut -f1)"
best=""
for run in 1 2 3; do
  start=$(date +%s.%N)
  "$build/kleakd" report "$dir/rec" --json > /dev/null
  end=$(date +%s.%N)
  secs=$(echo "$end - $start" | bc -l)
  if [ -z "$best" ] || [ "$(echo "$secs < $best" | bc -l)" = 1 ]; then best=$secs; fi
done
printf 'kleakd report: best of 3 %.3f s, %.1f M records/s\n' "$best" "$(echo "$records / $best / 1000000" | bc -l)"
