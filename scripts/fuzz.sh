#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) in their own clang tree and runs
# each one, from its seed corpus, for a time or a number of executions; then
# prints, per target: executions, exec/s, corpus size, peak RSS and findings
# (crashes, leaks, timeouts, out-of-memory), and exits 1 if there is any.
#
#   scripts/fuzz.sh [--time SECONDS | --runs N] [--no-build] [TARGET...]
#
#   --time SECONDS  run each target this long (default 60)
#   --runs N        run each target for N executions instead
#   --no-build      use the targets already built in $BUILD_DIR
#   TARGET          fuzz_protocol, fuzz_config, fuzz_recording,
#                   fuzz_ring_records (default: all four, one after another)
#
# Environment: BUILD_DIR (default build-fuzz); FUZZ_JOBS=N runs N targets at
# once. Inputs the fuzzer finds go to $BUILD_DIR/fuzz-corpus/<target> (kept
# between runs; the seeds in tests/fuzz/corpus are only read); a finding is
# written to $BUILD_DIR/fuzz-findings/<target>/ with the log beside it. Replay
# one with `$BUILD_DIR/tests/fuzz/<target> <file>`.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
limit=(-max_total_time=60)
build=yes
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --time) limit=(-max_total_time="$2"); shift 2 ;;
    --runs) limit=(-runs="$2"); shift 2 ;;
    --no-build) build=no; shift ;;
    -h|--help) usage; exit 0 ;;
    fuzz_*) targets+=("$1"); shift ;;
    *) echo "fuzz.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(fuzz_protocol fuzz_config fuzz_recording fuzz_ring_records)

build_dir=${BUILD_DIR:-build-fuzz}
if [ "$build" = yes ]; then
  CC=clang CXX=clang++ cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKLEAKD_BUILD_FUZZ=ON \
    -DKLEAKD_BUILD_TESTS=OFF -DKLEAKD_BUILD_BENCH=OFF >/dev/null
  cmake --build "$build_dir" -j"$(nproc)" --target "${targets[@]}"
fi

# Longest input per target: a request line may be 64 KiB, but its bugs show
# in far less; a recording seed is a meta.json and the first frames.
max_len() {
  case "$1" in
    fuzz_recording) echo 32768 ;;
    *) echo 8192 ;;
  esac
}

run_one() {
  local target=$1
  local corpus=$build_dir/fuzz-corpus/$target findings=$build_dir/fuzz-findings/$target
  mkdir -p "$corpus" "$findings"
  touch "$findings/.start"  # findings of this run are the files newer than it
  # -timeout: one input taking 10 s is a hang; -rss_limit_mb: the process
  # growing past 2 GiB is a finding too (a size field trusted, a leak).
  # -reload=0: one process per corpus, nothing else adds to it (rereading
  # the directory was 6 % of fuzz_protocol's time).
  "$build_dir/tests/fuzz/$target" "${limit[@]}" -timeout=10 -rss_limit_mb=2048 -max_len="$(max_len "$target")" \
    -reload=0 -print_final_stats=1 -artifact_prefix="$findings/" "$corpus" "tests/fuzz/corpus/$target" \
    >"$findings/log" 2>&1 || true
}

# A smaller quarantine and shorter allocation stacks than ASan's defaults
# (256 MiB, 30 frames): most of an execution's time was spent faulting in
# fresh quarantine pages and unwinding for every malloc. Use-after-free is
# still caught within the last 16 MiB freed.
export ASAN_OPTIONS=${ASAN_OPTIONS:-quarantine_size_mb=16:malloc_context_size=8}

running=0
for target in "${targets[@]}"; do
  run_one "$target" &
  running=$((running + 1))
  if [ "$running" -ge "${FUZZ_JOBS:-1}" ]; then wait -n; running=$((running - 1)); fi
done
wait

status=0
printf '%-18s %12s %8s %8s %7s  %s\n' target executions exec/s corpus rss_mb findings
for target in "${targets[@]}"; do
  findings=$build_dir/fuzz-findings/$target
  log=$findings/log
  stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
  corpus=$(grep -o 'corp: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  found=$(find "$findings" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' \
          -o -name 'oom-*' -o -name 'slow-unit-*' \) -newer "$findings/.start" | wc -l)
  # A run that died without a stats line (a crash in start-up) is a finding too.
  if [ -z "$(stat number_of_executed_units)" ] || grep -q '^==[0-9]*==ERROR' "$log"; then
    found=$((found > 0 ? found : 1))
  fi
  printf '%-18s %12s %8s %8s %7s  %s\n' "$target" "$(stat number_of_executed_units)" \
    "$(stat average_exec_per_sec)" "${corpus:-?}" "$(stat peak_rss_mb)" "$found"
  if [ "$found" -ne 0 ]; then
    status=1
    echo "  $target: see $log" >&2
    grep -m3 -E 'ERROR|SUMMARY|Test unit written' "$log" | sed 's/^/  /' >&2 || true
  fi
done
exit "$status"
