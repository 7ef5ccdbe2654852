// How much of the kernel's memory of each non-slab family kleakd accounts
// for (`stats` and `caches` answer with it; kleakctl caches prints it). Slab
// caches have their own reconciliation (cache_reconciliation.h).
//
// The kernel's side: /proc/meminfo `Percpu:` (the percpu chunks' populated
// pages: allocations plus free room in them) and `VmallocUsed:` (pages backing
// vmalloc areas; ioremap and guard pages are not in it), and /proc/vmstat's
// page allocation and free event counters (pgalloc_*, pgfree), which count
// pages. The kernel keeps no count of "pages the kernel holds", so pages are
// reconciled by events: every page the kernel allocated since kleakd started
// should be one kleakd saw (tracked, or counted: movable, a slab's, a vmalloc
// area's, a percpu chunk's).
#pragma once

#include <cstdint>
#include <istream>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "tracker.h"

namespace kleak::core {

struct KernelMemoryCounters {
    std::optional<std::uint64_t> percpu_bytes;        // meminfo Percpu:
    std::optional<std::uint64_t> vmalloc_used_bytes;  // meminfo VmallocUsed:
    std::optional<std::uint64_t> pgalloc_pages;       // vmstat: the sum of pgalloc_* (every zone)
    std::optional<std::uint64_t> pgfree_pages;        // vmstat pgfree
};

// Fills the meminfo fields from /proc/meminfo text ("Percpu:  1234 kB").
void parse_meminfo(std::istream& in, KernelMemoryCounters& out);
// Fills the vmstat fields from /proc/vmstat text ("pgalloc_normal 1234").
void parse_vmstat(std::istream& in, KernelMemoryCounters& out);

struct CoverageInput {
    bool traced[kFamilyCount] = {};                 // family attached
    std::vector<std::uint64_t> page_counts;         // by enum kleak_page_count, since start (empty: unknown)
    KernelMemoryCounters kernel_now;
    KernelMemoryCounters kernel_at_start;           // the event counters when tracing began
    std::uint32_t page_size = 4096;
};

// {"percpu": {...}, "vmalloc": {...}, "page": {...}}; see PROTOCOL.md, `stats`.
nlohmann::json coverage_to_json(const Tracker& tracker, const CoverageInput& input);

}  // namespace kleak::core
