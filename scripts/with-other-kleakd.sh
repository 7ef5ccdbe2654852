#!/usr/bin/env bash
# Runs a command while another kleakd traces the same kernel, as the packaged
# service would on a host where the tests run: its own socket, snapshots and
# printk log in a temporary directory, the default ring size, every allocator.
# The tests must pass beside it (their counts robust to its allocations and
# its programs attached next to theirs). Stops it afterwards, and fails if it
# died during the run.
#   scripts/with-other-kleakd.sh COMMAND [ARGS...]   (as root; BUILD_DIR, default build)
set -euo pipefail
build_dir=${BUILD_DIR:-build}
[[ $build_dir == /* ]] || build_dir="$(dirname "$0")/../$build_dir"
kleakd="$(realpath "$build_dir")/kleakd"
dir=$(mktemp -d /tmp/kleakd-other-XXXXXX)
cat > "$dir/kleakd.conf" <<CONF
{
  "socket": { "path": "$dir/kleakd.sock" },
  "snapshots": { "directory": "$dir/snapshots", "interval": "10s", "retention": 3 },
  "printk": { "file": { "enabled": true, "directory": "$dir/printk" } },
  "verdicts": { "interval": "1s" }
}
CONF
"$kleakd" serve --config "$dir/kleakd.conf" 2> "$dir/kleakd.log" &
other=$!
stop() {
  kill -TERM "$other" 2>/dev/null || true
  wait "$other" 2>/dev/null || true
  rm -rf "$dir"
}
trap stop EXIT
for _ in $(seq 300); do
  grep -q "queries on" "$dir/kleakd.log" && break
  kill -0 "$other" 2>/dev/null || { cat "$dir/kleakd.log" >&2; echo "the other kleakd did not start" >&2; exit 1; }
  sleep 0.1
done
grep -q "queries on" "$dir/kleakd.log" || { cat "$dir/kleakd.log" >&2; exit 1; }
echo "another kleakd (pid $other) traces beside the tests: $dir" >&2
status=0
"$@" || status=$?
if ! kill -0 "$other" 2>/dev/null; then
  echo "the other kleakd died during the run:" >&2
  tail -n 20 "$dir/kleakd.log" >&2
  status=1
fi
exit "$status"
