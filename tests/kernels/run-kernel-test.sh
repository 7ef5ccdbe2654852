#!/usr/bin/env bash
# Boots one of Debian's kernels in qemu (TCG: no KVM needed) with an
# initramfs built from this build tree, runs the real-kernel tests there
# (guest-tests.sh), and fails unless every one passed.
#   tests/kernels/run-kernel-test.sh SPEC BUILD_DIR [EXPECTED_ATTACH]
# SPEC: 6.1, 6.12, a linux-image-* package name or a .deb (fetch-kernel.sh).
# EXPECTED_ATTACH: tp_btf or raw_tp, the attach mode kleakd must choose
# there. Kernels are cached in BUILD_DIR/kernels/; the guest's console goes
# to BUILD_DIR/kernels/<release>.log.
set -euo pipefail
spec=$1
build=$(realpath "$2")
expect=${3:-}
here=$(dirname "$(realpath "$0")")
cache="$build/kernels"
mkdir -p "$cache"

for tool in qemu-system-x86_64 cpio; do
  command -v "$tool" >/dev/null || { echo "run-kernel-test.sh: $tool is missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
done
release=$("$here/fetch-kernel.sh" "$spec" "$cache")
echo "kernel $spec: Linux $release"

tests=("$build"/tests/kernel/test_kernel "$build"/tests/kernel/test_daemon "$build"/tests/kernel/test_batching
       "$build"/tests/kernel/test_bpf_knobs "$build"/kleakd "$build"/kleakctl)
initrd="$cache/$release.cpio.gz"
"$here/make-initramfs.sh" "$initrd" "$here/guest-tests.sh" "${tests[@]}"

log="$cache/$release.log"
# possible_cpus=4 with two vCPUs: kleakd sizes its rings to the online CPUs.
cmdline="console=ttyS0 panic=-1 loglevel=4 possible_cpus=4 kleak_build=$build"
[ -n "$expect" ] && cmdline+=" kleak_expect_attach=$expect"
# -cpu max: the guest kernel sees the host's CPU features (TCG emulates them).
# Two CPUs: the tests take one offline and back, and merge across CPUs.
# Single-threaded TCG (both vCPUs on one host thread): with multi-threaded
# TCG a 6.12 guest once died of an "Oops: int3" in kmem_cache_free while a
# tracepoint's static key was being patched (text_poke_bp across vCPUs),
# which emulated cross-modifying code does not order as hardware does.
accel=${KLEAK_QEMU_ACCEL:-tcg,thread=single}
start=$(date +%s)
status=0
timeout "${KLEAK_GUEST_TIMEOUT:-1500}" qemu-system-x86_64 -accel "$accel" -cpu max -smp 2 -m 2048 -display none -serial stdio \
  -monitor none -no-reboot -kernel "$cache/$release/vmlinuz" -initrd "$initrd" -append "$cmdline" \
  </dev/null >"$log" 2>&1 || status=$?
elapsed=$(( $(date +%s) - start ))

summary() { grep -a -E 'KLEAK-GUEST|\[  (PASSED|FAILED|SKIPPED) ' "$log" | tr -d '\r' || true; }
if ! grep -a -q "KLEAK-GUEST-START $release" "$log"; then
  echo "Linux $release did not boot to the tests (qemu status $status, ${elapsed}s); the end of $log:" >&2
  tail -n 40 "$log" >&2
  exit 1
fi
summary
# A kernel that oopsed or warned failed, whatever the tests said.
if grep -a -q -E 'Oops|BUG:|WARNING:|Call Trace|Kernel panic' "$log"; then
  echo "Linux $release: the kernel logged an oops or a warning (${elapsed}s under qemu):" >&2
  grep -a -E -A 12 'Oops|BUG:|WARNING:|Kernel panic' "$log" | head -n 60 >&2
  exit 1
fi
if grep -a -q 'KLEAK-GUEST-EXIT 0' "$log"; then
  echo "Linux $release: every kernel test passed (${elapsed}s under qemu)"
  exit 0
fi
if ! grep -a -q 'KLEAK-GUEST-EXIT' "$log"; then
  echo "Linux $release: the guest did not finish (qemu status $status after ${elapsed}s); the end of $log:" >&2
  tail -n 60 "$log" >&2
else
  echo "Linux $release: kernel tests failed (${elapsed}s under qemu); their output:" >&2
  grep -a -E '^\[ +FAILED|Failure|Expected|Which is|error:|  Actual|value of|KLEAK-GUEST-FAILED|not found' "$log" |
    head -n 80 >&2 || true
fi
exit 1
