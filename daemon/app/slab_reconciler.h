// The daemon's side of slab-cache reconciliation: names each kmem_cache the
// tracker meets once (kleak__cache_info), reads /proc/slabinfo, and hands both
// to the pure core (core/cache_reconciliation.h) for `caches`, the verdicts
// and snapshots.
#pragma once

#include <absl/container/flat_hash_set.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/cache_reconciliation.h"
#include "core/slab_caches.h"
#include "core/tracker.h"
#include "kernel/bpf_tracer.h"

namespace kleak {

class SlabReconciler {
public:
    explicit SlabReconciler(const BpfTracer& tracer) : tracer_(tracer) {}

    // Names the caches new since the last call, reads /proc/slabinfo and
    // reconciles. Without the kernel's counts (unreadable), kleakd's side only.
    core::Reconciliation reconcile(const core::Tracker& tracker, const core::ReconcileRules& rules = {});
    // Every site's main cache, by SiteId (names new caches first).
    std::vector<std::string> site_caches(const core::Tracker& tracker);
    // {"named", "unnamed", "slabinfo_reads", "slabinfo_errors", "last_error"}
    nlohmann::json stats() const;

private:
    void name_new_caches(const core::Tracker& tracker);

    const BpfTracer& tracer_;
    core::CacheNames names_;
    absl::flat_hash_set<std::uint64_t> unreadable_;  // addresses kleak__cache_info could not read: not retried
    std::uint64_t slabinfo_reads_ = 0;
    std::uint64_t slabinfo_errors_ = 0;
    std::string last_error_;
};

}  // namespace kleak
