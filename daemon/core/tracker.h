// The outstanding-allocation tracker and the per-call-site aggregates.
//
// Semantics (kleak's, made exact):
//  - an allocation inserts its pointer;
//  - a free of a known pointer removes it and credits the count and bytes to the
//    site that allocated it (`frees`, `bytes_freed`); the freeing site gets a
//    `free_calls`;
//  - a free of an unknown pointer (allocated before tracing began, or its
//    record was lost) is an unmatched free, counted at the freeing site;
//  - an allocation of a pointer that is still outstanding means its free was
//    missed: the old entry is counted `replaced` at its site and replaced.
// kmalloc and kmem_cache memory match by pointer, whichever free function ran.
// Aggregates are updated per event, so queries cost O(sites), not O(allocations).
#pragma once

#include <absl/container/flat_hash_map.h>

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "event.h"

namespace kleak::core {

using SiteId = std::uint32_t;

struct SiteStats {
    std::uint64_t call_site = 0;
    EventKind kind = EventKind::kmalloc;  // first kind seen at this site
    std::uint64_t allocs = 0;             // allocations made here
    std::uint64_t bytes_alloc = 0;        // ... their allocated bytes (with slack)
    std::uint64_t bytes_req = 0;          // ... their requested bytes
    std::uint64_t frees = 0;              // allocations made here since freed (anywhere)
    std::uint64_t bytes_freed = 0;        // ... their allocated bytes
    std::uint64_t replaced = 0;           // allocations made here whose free was missed
    std::uint64_t replaced_bytes = 0;
    std::uint64_t outstanding = 0;        // allocations made here, still live
    std::uint64_t outstanding_bytes = 0;
    std::uint64_t free_calls = 0;         // matched frees issued from this site
    std::uint64_t unmatched_frees = 0;    // frees issued here of pointers never seen
};

struct Totals {
    std::uint64_t allocs = 0;
    std::uint64_t frees = 0;  // matched frees
    std::uint64_t bytes_alloc = 0;
    std::uint64_t bytes_req = 0;
    std::uint64_t bytes_freed = 0;
    std::uint64_t unmatched_frees = 0;
    std::uint64_t replaced = 0;
    std::uint64_t outstanding = 0;
    std::uint64_t outstanding_bytes = 0;
};

struct OutstandingAllocation {
    std::uint64_t ts_ns;
    SiteId site;
    std::uint32_t bytes_alloc;
};

class Tracker {
public:
    void apply(const Event& event);
    void apply(std::span<const Event> events) {
        for (const Event& e : events) apply(e);
    }

    const std::vector<SiteStats>& sites() const { return sites_; }
    const Totals& totals() const { return totals_; }
    std::size_t outstanding_count() const { return live_.size(); }

    // Calls fn(ptr, const OutstandingAllocation&) for every live allocation.
    template <class Fn>
    void for_each_outstanding(Fn&& fn) const {
        for (const auto& [ptr, entry] : live_) fn(ptr, entry);
    }

    // Approximate heap bytes the tracker holds (tables only).
    std::size_t memory_bytes() const;

    // Forget everything: a fresh baseline.
    void reset();

private:
    SiteId intern(std::uint64_t call_site, EventKind kind);

    absl::flat_hash_map<std::uint64_t, OutstandingAllocation> live_;
    absl::flat_hash_map<std::uint64_t, SiteId> site_ids_;
    // Call sites repeat: a small direct-mapped cache in front of site_ids_
    // saves a hash-table probe on most events. call_site 0 marks a free slot
    // (no kernel code lives at address 0).
    struct SiteCacheSlot {
        std::uint64_t call_site = 0;
        SiteId id = 0;
    };
    std::array<SiteCacheSlot, 1024> site_cache_{};
    std::vector<SiteStats> sites_;
    Totals totals_;
};

}  // namespace kleak::core
