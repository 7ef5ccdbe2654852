// Facts about the running host that recordings and reports carry.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/family_coverage.h"

namespace kleak {

std::string kernel_release();  // uname -r
std::string boot_id();         // /proc/sys/kernel/random/boot_id, "" if unreadable
std::string host_name();
// CLOCK_MONOTONIC in ns: the clock bpf_ktime_get_ns() reads.
std::uint64_t monotonic_now_ns();
// CPUs the kernel may ever bring online: one ring each.
unsigned possible_cpus();
// CPUs online now (/sys/devices/system/cpu/online); nullopt if unreadable.
std::optional<std::vector<unsigned>> online_cpus();
// The text of /proc/slabinfo (root only; SLUB counts partial slabs to fill it,
// ~1 ms on a small host), or nullopt with `error` saying why.
std::optional<std::string> read_slabinfo(std::string& error);
// Percpu:, VmallocUsed: (/proc/meminfo) and the page event counters
// (/proc/vmstat); a field stays empty when its file or line is missing.
core::KernelMemoryCounters read_kernel_memory_counters();

}  // namespace kleak
