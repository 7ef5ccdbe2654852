#!/usr/bin/env bash
# Fetches one of Debian's kernel packages and extracts its vmlinuz.
#   tests/kernels/fetch-kernel.sh SPEC CACHE_DIR
# SPEC: a series ("6.1": the newest linux-image-6.1.0-*-cloud-amd64; "6.12":
# the newest linux-image-6.12.*+deb12-cloud-amd64), a package name
# (linux-image-6.12.118+deb12-cloud-amd64), or a .deb file.
# Prints the kernel release (e.g. 6.1.0-57-cloud-amd64); the image is
# CACHE_DIR/<release>/vmlinuz. Fails loudly when apt cannot fetch it.
set -euo pipefail
spec=$1
cache=$2
mkdir -p "$cache"

newest() {  # newest package whose name matches the extended regex $1
  apt-cache search --names-only "$1" | cut -d' ' -f1 | sort -V | tail -n 1
}

case "$spec" in
  *.deb) deb=$(realpath "$spec") ;;
  6.1) package=$(newest '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$') ;;
  6.12) package=$(newest '^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64$') ;;
  linux-image-*) package=$spec ;;
  *) echo "fetch-kernel.sh: '$spec' is not a series (6.1, 6.12), a linux-image package or a .deb" >&2; exit 2 ;;
esac

if [ -z "${deb:-}" ]; then
  if [ -z "$package" ]; then
    echo "fetch-kernel.sh: apt knows no package for series $spec: run apt-get update" >&2
    exit 1
  fi
  # The version apt would fetch now: a newer upload under the same package
  # name replaces a cached one.
  version=$(apt-cache policy "$package" | awk '/Candidate:/ {print $2}' | sed 's/:/%3a/')
  deb=$(ls "$cache"/"${package}_${version}"_*.deb 2>/dev/null | head -n 1 || true)
  if [ -z "$deb" ]; then
    # apt-get download writes to the current directory; _apt cannot always
    # write there, which is only a warning.
    (cd "$cache" && apt-get download -q "$package" 2>&1 | grep -v 'unsandboxed' >&2) || true
    deb=$(ls "$cache"/"${package}_${version}"_*.deb 2>/dev/null | head -n 1 || true)
    if [ -z "$deb" ]; then
      echo "fetch-kernel.sh: apt-get download $package failed" >&2
      exit 1
    fi
  fi
fi

unpacked=$(mktemp -d)
trap 'rm -rf "$unpacked"' EXIT
dpkg-deb -x "$deb" "$unpacked"
vmlinuz=$(ls "$unpacked"/boot/vmlinuz-* 2>/dev/null | head -n 1 || true)
if [ -z "$vmlinuz" ]; then
  echo "fetch-kernel.sh: $deb holds no /boot/vmlinuz-*" >&2
  exit 1
fi
release=${vmlinuz##*/vmlinuz-}
mkdir -p "$cache/$release"
cp "$vmlinuz" "$cache/$release/vmlinuz"
echo "$release"
