#!/usr/bin/env bash
# Installs every Debian 12 package kleakd needs to build, test and benchmark.
# Run as root on a fresh machine: apt-get update is part of it.
set -euo pipefail

packages=(
  build-essential cmake pkg-config git
  clang llvm                      # BPF target compiler
  libclang-rt-14-dev              # libFuzzer and the sanitizer runtimes for clang (scripts/fuzz.sh)
  bpftool libbpf-dev libelf-dev zlib1g-dev
  libspdlog-dev libfmt-dev nlohmann-json3-dev libcli11-dev libabsl-dev
  libsystemd-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  python3 python3-jsonschema bc
  bpftrace                        # the peer in bench/compare.sh
  systemd systemd-container       # the service test boots systemd in systemd-nspawn
  qemu-system-x86 busybox-static cpio   # the kernel matrix boots Debian's kernels (tests/kernels)
  debhelper dpkg-dev lintian scdoc man-db   # the Debian package (packaging/) and its test
)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps.sh: run as root (apt-get needs it)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${packages[@]}"
