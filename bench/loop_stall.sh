#!/usr/bin/env bash
# bench/loop_stall.sh - what kleakd loses when its loop thread cannot run.
#
# On a VM the host can stop the vCPU the loop runs on for 100 ms and more
# (bench/cpu_steal.py measures it) while the other vCPU goes on producing.
# This runs `kleakd trace` under two writev loader threads at full rate and
# stops the loop thread alone (ptrace, bench/loop_stall.py) for MS ms, TIMES
# times, 0.5 s apart, then prints the records and the drops per CPU. The ring
# readers (daemon/kernel/ring_readers.h) keep each ring copied out meanwhile,
# up to twice its size. BUILD_DIR=... runs another build (A/B).
#
# Usage: bench/loop_stall.sh [MS] [TIMES] [RUNS]   (root; defaults 120 5 3)
set -euo pipefail
cd "$(dirname "$0")/.."
ms=${1:-120}
times=${2:-5}
runs=${3:-3}
build=${BUILD_DIR:-build}
[ "$(id -u)" -eq 0 ] || { echo "loop_stall.sh: run as root (BPF, ptrace)" >&2; exit 1; }
tmp=$(mktemp -d /tmp/kleakd-stall-XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill -INT "$p" 2> /dev/null || true; done; rm -rf "$tmp"' EXIT
echo "loop_stall: $(date -u '+%Y-%m-%d %H:%M UTC'); the loop stopped $times x $ms ms per run, 2 writev loaders"
for run in $(seq 1 "$runs"); do
  "$build/kleakd" trace --json --interval 3600 > "$tmp/out.json" 2> "$tmp/err" &
  tracer=$!
  pids+=("$tracer")
  for _ in $(seq 1 100); do grep -qs tracing "$tmp/err" && break; sleep 0.1; done
  duration=$(python3 -c "print(max(3, int($times * (0.5 + $ms / 1000) + 2)))")
  "$build/bench/kleakd-loadgen" writev --threads 2 --duration "$duration" > /dev/null &
  loader=$!
  sleep 0.5
  python3 bench/loop_stall.py "$tracer" "$ms" "$times" 0.5
  wait "$loader"
  kill -INT "$tracer"
  wait "$tracer"
  python3 - "$tmp/out.json" "$run" << 'PY'
import json, sys
d = json.load(open(sys.argv[1]))
l = d["losses"]
print(f"run {sys.argv[2]}: {d['run']['records']:,} records, drops per CPU {l['dropped_per_cpu']}")
PY
done
