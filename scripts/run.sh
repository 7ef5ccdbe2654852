#!/usr/bin/env bash
# Builds kleakd, runs the daemon on a repo-local config (socket and snapshots
# under build/run/), and shows the current leaks every few seconds until
# Ctrl-C; then stops the daemon, which writes a final snapshot.
#   scripts/run.sh [SECONDS_BETWEEN_TABLES]   (as root)
set -euo pipefail
cd "$(dirname "$0")/.."
period=${1:-5}
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target kleakd kleakctl >/dev/null
run_dir="$PWD/build/run"
mkdir -p "$run_dir"
sed "s|@RUN_DIR@|$run_dir|g" config/kleakd.local.conf.in > "$run_dir/kleakd.conf"

build/kleakd serve --config "$run_dir/kleakd.conf" 2> "$run_dir/kleakd.log" &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null; wait $daemon 2>/dev/null; echo; tail -n 3 "$run_dir/kleakd.log"; echo "snapshots: $run_dir/snapshots"' EXIT
for _ in $(seq 100); do
  grep -q "queries on" "$run_dir/kleakd.log" 2>/dev/null && break
  kill -0 $daemon 2>/dev/null || { cat "$run_dir/kleakd.log"; exit 1; }
  sleep 0.1
done
cat "$run_dir/kleakd.log"
export KLEAKD_SOCKET="$run_dir/kleakd.sock"
echo "kleakd is running; in another shell: KLEAKD_SOCKET=$KLEAKD_SOCKET build/kleakctl leaks|stats|report"
while kill -0 $daemon 2>/dev/null; do
  sleep "$period"
  echo; date '+%T'
  build/kleakctl leaks --top 10 || true
done
