#!/usr/bin/env bash
# Replay speed of `kleakd report`: writes a synthetic recording of RECORDS
# records (default 20M) and times the report over it RUNS times (default 5),
# printing the best and the median run, wall clock and CPU time (user + system,
# both threads: replay tracks on a second thread when there are two CPUs).
# The machine is shared: quote the median with the load average printed.
# Usage: bench/replay.sh [RECORDS] [RUNS]   (after scripts/build.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-20000000}
runs=${2:-5}
build=${BUILD_DIR:-build}
dir=$(mktemp -d /tmp/kleakd-replay-XXXXXX)
trap 'rm -rf "$dir"' EXIT
"$build/bench/kleakd-make-recording" "$dir/rec" "$records"
echo "recording: $records records, $(du -sh "$dir/rec" | cut -f1); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
walls=()
cpus=()
for ((run = 1; run <= runs; run++)); do
  # GNU time's %e %U %S: wall, user and system seconds.
  read -r wall user sys < <({ /usr/bin/time -f '%e %U %S' "$build/kleakd" report "$dir/rec" --json > /dev/null; } 2>&1 | tail -1)
  walls+=("$wall")
  cpus+=("$(echo "$user + $sys" | bc -l)")
done
best=$(printf '%s\n' "${walls[@]}" | sort -g | head -1)
median=$(printf '%s\n' "${walls[@]}" | sort -g | sed -n "$(((runs + 1) / 2))p")
cpu_median=$(printf '%s\n' "${cpus[@]}" | sort -g | sed -n "$(((runs + 1) / 2))p")
rate() { echo "$records / $1 / 1000000" | bc -l; }
printf 'kleakd report, %d runs: best %.3f s (%.1f M records/s), median %.3f s (%.1f M records/s); median CPU %.3f s (%.0f ns per record)\n' \
  "$runs" "$best" "$(rate "$best")" "$median" "$(rate "$median")" "$cpu_median" "$(echo "$cpu_median * 1000000000 / $records" | bc -l)"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
