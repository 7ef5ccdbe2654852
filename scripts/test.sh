#!/usr/bin/env bash
# Builds everything and runs every test: unit tests, then the real-kernel
# tests (root and BTF needed; they fail, loudly, where they cannot run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
cd "${BUILD_DIR:-build}"
ctest --output-on-failure -L unit
ctest --output-on-failure -L kernel
