#!/usr/bin/env bash
# Builds everything and runs every test: unit tests, the real-kernel tests
# (root and BTF needed; they fail, loudly, where they cannot run), and the
# systemd service test (boots systemd in systemd-nspawn).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
cd "${BUILD_DIR:-build}"
ctest --output-on-failure -L unit
ctest --output-on-failure -L kernel
ctest --output-on-failure -L systemd
ctest --output-on-failure -L package
