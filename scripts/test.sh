#!/usr/bin/env bash
# Builds everything and runs every test: unit tests, the real-kernel tests
# (root and BTF needed; they fail, loudly, where they cannot run), again with
# another kleakd running (scripts/with-other-kleakd.sh), the same
# kernel tests on Debian's 6.1 and 6.12 kernels booted in qemu (the kernel
# matrix, tests/kernels), and the systemd service and package tests (systemd
# booted in systemd-nspawn).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
scripts/build.sh
cd "${BUILD_DIR:-build}"
ctest --output-on-failure -L unit
ctest --output-on-failure -L '^kernel$'
# Once more beside another kleakd, as on a host running the packaged service:
# the tests must neither collide with it nor count its allocations (~90 s).
BUILD_DIR="$PWD" "$root/scripts/with-other-kleakd.sh" ctest --output-on-failure -L '^kernel$'
ctest --output-on-failure -L '^kernels$'
ctest --output-on-failure -L systemd
ctest --output-on-failure -L package
