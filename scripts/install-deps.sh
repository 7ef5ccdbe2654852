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
  prometheus-cpp-dev libcpp-httplib-dev   # kleakd-exporter: exposition format, HTTP
  prometheus                      # promtool (rules tests, metrics check); the nspawn test's Prometheus
  libgtest-dev libgmock-dev libbenchmark-dev
  python3 python3-jsonschema bc
  bpftrace                        # the peer in bench/compare.sh
  systemd systemd-container       # the service test boots systemd in systemd-nspawn
  qemu-system-x86 busybox-static cpio   # the kernel matrix boots Debian's kernels (tests/kernels)
  debhelper dpkg-dev lintian scdoc man-db   # the Debian package (packaging/) and its test
  libjs-d3                        # inlined into kleakctl's HTML report (d3.min.js)
  chromium                        # opens the HTML report headless in its tests (tests/report)
)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps.sh: run as root (apt-get needs it)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Debian's prometheus package enables and starts a Prometheus server on :9090.
# The tests only need its binaries: keep a server this script installed off
# (one the machine already had is left alone).
had_prometheus=$(dpkg-query -W -f='${db:Status-Status}' prometheus 2>/dev/null || true)
apt-get update -q
apt-get install -y -q --no-install-recommends "${packages[@]}"
if [ "$had_prometheus" != installed ] && [ -d /run/systemd/system ]; then
  systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
