#!/usr/bin/env bash
# ThreadSanitizer over the code that runs threads: the replay's tracking
# thread (test_threaded_replay), the query server (test_query_server), the
# ring reader threads on real rings (test_ring_consumer, test_batching) and
# the daemon's event loop with its readers and clients (the test_daemon
# tests below, which start a TSan-built kleakd). Builds them in their own
# tree ($BUILD_DIR, default build-tsan); any report fails the run
# (halt_on_error). scripts/test.sh runs it (CI); ~10 min on 2 cores.
#
# Left out: tests that time things, which TSan's 5-15x slowdown makes fail
# without any race, and tests that add no thread the chosen ones lack:
#   RingConsumerKernel.ReadersKeepARingFromOverflowingWhileNothingDrains
#       readers must copy as fast as a pipe churn fills the ring (a rate);
#       the readers' copying still runs under TSan in
#       KernelBatching.ACpusSmallRingWakesItsConsumer and in
#       the daemon tests.
#   Daemon.MinAgeCountsOnlyOldAllocations     --min-age 1s against a sleep
#   Daemon.HalfClosedClientWithPendingRepliesDoesNotSpin   a CPU-time limit
#   Daemon.ResetForgetsHeldAllocationsAndRestartsUptime    uptime after a reset
#   Caches.*                  counts read within a wait; one thread, the loop
#   the other test_daemon tests: the loop, readers and clients they use are
#       those of the chosen ones (reports, verdicts, exporter, stacks).
#
# libbpf is not instrumented. That costs nothing here: only the loading
# thread calls into it; the readers touch the rings' mmapped pages with
# their own atomics, which TSan sees.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build-tsan}
daemon_tests=(
  Daemon.LeaksSeesHeldPipesAndTheirRelease             # loop, a reader per CPU, a client
  Daemon.FiftyConcurrentClientsUnderAllocationLoad     # 50 clients while the rings fill
  Daemon.ClientThatNeverReadsDoesNotStallOthersOrIngest
  Daemon.ACpuOfflineAtStartGetsItsFullRingWhenItComesOnline  # a ring replaced under its reader
  Daemon.ReloadRejectsABrokenConfigAndAppliesAGoodOne
  Daemon.SnapshotsAreWrittenRotatedAndFinal
  Daemon.SigtermDetachesAndRemovesTheSocket            # readers stopped, last drain
  Printk.TokensFromEveryCpuComeBackExactlyOnceInTimeOrder
)
filter=$(IFS=:; echo "${daemon_tests[*]}")
# binary and gtest filter
tests=("unit/test_threaded_replay *"
       "service/test_query_server *"
       "kernel/test_ring_consumer -RingConsumerKernel.ReadersKeepARingFromOverflowingWhileNothingDrains"
       "kernel/test_batching *"
       "kernel/test_daemon $filter")
targets=()
for test in "${tests[@]}"; do
  binary=${test%% *}
  targets+=("${binary##*/}")
done
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKLEAKD_SANITIZE=thread -DKLEAKD_BUILD_BENCH=OFF \
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG" >/dev/null
cmake --build "$build_dir" -j"$(nproc)" --target kleakd kleakctl "${targets[@]}"
# Reports go to stderr and end the process with exit code 66; kleakd started
# by test_daemon inherits this, so a race in the daemon fails its test.
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
status=0
for test in "${tests[@]}"; do
  binary=${test%% *}
  echo "== TSan: $binary (${SECONDS}s)"
  "$build_dir/tests/$binary" --gtest_brief=1 --gtest_filter="${test#* }" || status=1
done
echo "== TSan: done in ${SECONDS}s"
exit "$status"
