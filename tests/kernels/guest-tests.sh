#!/bin/sh
# The kernel tests a matrix guest runs (tests/kernels/run-kernel-test.sh):
# the real-kernel test binaries of the build tree, which sit in the
# initramfs at their build paths. kleak_build and kleak_expect_attach come
# from the kernel command line (the kernel hands unknown key=value words to
# /init as its environment).
#
# What they cover on each kernel: held pipes seen at their sites and freed
# when closed (record and report, trace, the daemon's leaks), the
# trace/record/report round trip, printk capture, no drops at a moderate load
# (50 clients while allocating), the attach mode and its error, per-CPU
# batches and CPU hotplug (an offline CPU's small ring wakes its consumer),
# rings for the online CPUs (the guest boots with
# 4 possible CPUs and 2 online), the BPF knobs, detach leaving nothing, verdicts
# (a leak growing, a plateau not, caches reclaimable, the maple tree's
# untracked frees), slab caches (held pipes counted in the caches
# /proc/slabinfo names, excess by its rule, kmem_buckets objects on 6.11+),
# allocator families (pipe buffer pages at the pipe write, BPF maps' percpu
# elements and vmalloc areas, or the warning where a family is missing),
# kernel stacks (the stack BPF loads; a held pipe's stack shows the pipe(2)
# path, its comm and cgroup; `all` sampled by pointer hash keeps about 1 in
# 2^N; leaks, suspects and snapshot rows name the top comm and cgroup; a
# named function's sites only; off captures none),
# a restart's handover (test_batching's KernelHandover: a tracer adopts the
# links, maps and rings another left, reads what was written meanwhile; one
# of another configuration replaces them; nothing left attached after).
b=${kleak_build:?kleak_build= missing from the kernel command line}
[ -n "${kleak_expect_attach:-}" ] && export KLEAKD_EXPECT_ATTACH=$kleak_expect_attach
failed=0
run() {
  echo "KLEAK-GUEST-TEST $*"
  "$@" --gtest_color=no || { failed=1; echo "KLEAK-GUEST-FAILED $1"; }
}
run "$b/tests/kernel/test_kernel"
run "$b/tests/kernel/test_daemon" --gtest_filter='Daemon.LeaksSeesHeldPipesAndTheirRelease:Daemon.FiftyConcurrentClientsUnderAllocationLoad:Daemon.SigtermDetachesAndRemovesTheSocket:Daemon.ACpuOfflineAtStartGetsItsFullRingWhenItComesOnline:Printk.*:Verdicts.*:Caches.*:Families.*:Stacks.*'
run "$b/tests/kernel/test_batching"
run "$b/tests/kernel/test_bpf_knobs"
exit $failed
