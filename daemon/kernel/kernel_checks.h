// Start-up checks of what kleakd needs from the kernel, each failing with one
// line that names the missing piece and the first Linux release that has it
// (README, "Kernels"). Checked before anything is loaded, so a user on an old
// kernel reads why instead of a verifier log.
#pragma once

#include <string>

namespace kleak {

inline constexpr const char* kVmlinuxBtf = "/sys/kernel/btf/vmlinux";

// BTF (CONFIG_DEBUG_INFO_BTF): CO-RE relocations and the tracepoint census.
void check_btf_present();
// Root, or CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN before 5.8).
void check_privileges();
// BPF ring buffers (5.8). Kinds of BPF program and map that are older than
// them (raw tracepoints 4.17, per-CPU and mmapable arrays) are implied.
void check_kernel_features();
// A ring buffer as the inner map of an array of maps (5.10): one ring per CPU.
void check_rings_nest(int ring_fd);

// "[confidentiality]" in /sys/kernel/security/lockdown: BPF may not read
// kernel memory, so the verifier refuses every program that reads through a
// pointer (as "unknown func bpf_probe_read_kernel").
bool locked_down_for_confidentiality();

// The start-up error for a load that failed without a verifier refusal.
// EPERM/EACCES blame privileges only when kleakd lacks them; with them, the
// usual culprits are named (lockdown, a security module).
std::string describe_load_failure(int negative_errno);

}  // namespace kleak
