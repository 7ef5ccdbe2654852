#!/usr/bin/env bash
# ThreadSanitizer over the code that runs threads: the replay's tracking
# thread (test_threaded_replay), the query server (test_query_server), the
# ring reader threads on real rings (test_ring_consumer, test_batching) and
# the daemon's event loop with its readers and clients (test_daemon, which
# starts a TSan-built kleakd). Builds them in their own tree ($BUILD_DIR,
# default build-tsan); any report fails the run (halt_on_error).
#
# libbpf is not instrumented. That costs nothing here: only the loading
# thread calls into it; the readers touch the rings' mmapped pages with
# their own atomics, which TSan sees.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build-tsan}
tests=(unit/test_threaded_replay service/test_query_server kernel/test_ring_consumer kernel/test_batching
       kernel/test_daemon)
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKLEAKD_SANITIZE=thread -DKLEAKD_BUILD_BENCH=OFF \
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG" >/dev/null
cmake --build "$build_dir" -j"$(nproc)" --target kleakd kleakctl "${tests[@]##*/}"
# Reports go to stderr and end the process with exit code 66; kleakd started
# by test_daemon inherits this, so a race in the daemon fails its test.
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
status=0
for test in "${tests[@]}"; do
  echo "== TSan: $test"
  "$build_dir/tests/$test" --gtest_brief=1 || status=1
done
exit "$status"
