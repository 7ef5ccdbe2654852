#!/usr/bin/env bash
# Builds an initramfs that boots to the kleakd kernel tests.
#   tests/kernels/make-initramfs.sh OUT.cpio.gz GUEST_SCRIPT FILE...
# The image holds busybox (static), /init (guest-init.sh), GUEST_SCRIPT as
# /guest-tests.sh, and each FILE at its own absolute path (so test binaries
# find kleakd where they were built to find it) with the shared libraries
# each one needs (ldd) and the dynamic loader.
set -euo pipefail
out=$(realpath -m "$1")
guest_script=$2
shift 2
here=$(dirname "$(realpath "$0")")
busybox=/bin/busybox
if [ ! -x "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
  echo "make-initramfs.sh: needs a static $busybox (package busybox-static; scripts/install-deps.sh installs it)" >&2
  exit 1
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 755 "$root"  # the guest's /: nobody runs kleakd in a test
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc,root,lib64}
cp "$busybox" "$root/bin/busybox"
cp "$here/guest-init.sh" "$root/init"
cp "$guest_script" "$root/guest-tests.sh"
chmod +x "$root/init" "$root/guest-tests.sh"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"

copy() {  # a file at its own path, following links to the real file
  local target="$root$1"
  [ -e "$target" ] && return
  mkdir -p "$(dirname "$target")"
  cp -L "$1" "$target"
}
for f in "$@"; do
  [ -e "$f" ] || { echo "make-initramfs.sh: $f is missing" >&2; exit 1; }
  copy "$(realpath -s "$f")"
  if ldd "$f" >/dev/null 2>&1; then
    while read -r lib; do copy "$lib"; done < <(ldd "$f" | grep -o '/[^ ]*' | sort -u)
  fi
done
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 > "$out"
