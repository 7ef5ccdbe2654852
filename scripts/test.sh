#!/usr/bin/env bash
# Builds everything and runs every test: unit tests, the real-kernel tests
# (root and BTF needed; they fail, loudly, where they cannot run), again with
# another kleakd running (scripts/with-other-kleakd.sh), the unit and kernel
# tests built with ASan+UBSan (build-asan), the threaded tests built with
# TSan (build-tsan, scripts/tsan.sh), each fuzz target for 30 s from its seed
# corpus (build-fuzz; any crash, leak or timeout fails), the kernel tests on
# Debian's 6.1 and 6.12 kernels booted in qemu (the kernel matrix,
# tests/kernels), and the systemd service and package tests (systemd booted
# in systemd-nspawn).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build_dir=${BUILD_DIR:-build}
scripts/build.sh
(
  cd "$build_dir"
  ctest --output-on-failure -L unit
  ctest --output-on-failure -L '^kernel$'
  # Once more beside another kleakd, as on a host running the packaged service:
  # the tests must neither collide with it nor count its allocations (~90 s).
  BUILD_DIR="$PWD" "$root/scripts/with-other-kleakd.sh" ctest --output-on-failure -L '^kernel$'
)

# Sanitizers: the unit and real-kernel tests under ASan+UBSan (the kernel
# tests start the ASan-built kleakd and kleakctl, so LeakSanitizer checks
# them at exit too; ~5 min), then the threaded tests under TSan
# (scripts/tsan.sh, ~10 min). -O1 -g1 (line tables only) compiles faster
# than -O2 -g and still gives every report its file and line.
BUILD_DIR=build-asan scripts/build.sh -DKLEAKD_SANITIZE=address,undefined -DKLEAKD_BUILD_BENCH=OFF \
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG"
(
  cd build-asan
  ctest --output-on-failure -L unit
  ctest --output-on-failure -L '^kernel$'
)
scripts/tsan.sh
scripts/fuzz.sh --time 30

cd "$build_dir"
ctest --output-on-failure -L '^kernels$'
ctest --output-on-failure -L systemd
ctest --output-on-failure -L package
