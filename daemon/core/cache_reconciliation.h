// kleakd's live objects per slab cache against the kernel's own count
// (/proc/slabinfo's active objects): the check that tells a leak from frees
// kleakd cannot see.
//
// The kernel's active count includes the free objects of its per-CPU slabs and
// sheaves and every object allocated before kleakd started, so it is never
// below the true live count. kleakd counting more live objects than that
// (the cache's excess) proves frees it missed: maple-tree nodes freed in bulk,
// kfree_rcu batches. Such a cache's sites are judged `untracked-frees`, each
// with its share of the excess, and never rank as leaks (verdict.h).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "slab_caches.h"
#include "symbolizer.h"
#include "tracker.h"

namespace kleak::core {

struct SlabinfoRow {
    std::string name;
    std::uint64_t active_objs = 0;
    std::uint64_t num_objs = 0;
    std::uint32_t objsize = 0;
};

struct SlabinfoParse {
    std::vector<SlabinfoRow> rows;
    std::string error;  // "" when every line parsed
};
// /proc/slabinfo, version 2.1 (every kernel since 2.6.12).
SlabinfoParse parse_slabinfo(std::string_view text);

// A cache's excess proves missed frees from this many objects, and this share
// of kleakd's live count, on: below either, it is the seconds kleakd's view
// lags the kernel's (up to a drain period, 100 ms) on a busy cache.
struct ReconcileRules {
    std::uint64_t min_excess = 32;
    double min_excess_share = 0.02;
    bool operator==(const ReconcileRules&) const = default;
};

struct CacheRow {
    std::string name;
    std::uint64_t live = 0;        // kleakd's outstanding allocations from it
    std::uint64_t live_bytes = 0;
    std::optional<std::uint64_t> kernel_active;  // none: not in /proc/slabinfo (kmalloc-large, unnamed)
    std::optional<std::uint64_t> kernel_total;   // num_objs
    // kmalloc-N rows: the kernel's active objects in every cache of size N that
    // can hold a kmalloc (kmalloc-N of every type, kmem_buckets' X-N).
    std::optional<std::uint64_t> kernel_pool_active;
    // live - kernel_active when that is above the rules' floor; for kmalloc-N
    // rows the size's excess (kleakd's kmalloc-N rows of every type against
    // kernel_pool_active), shared by live objects.
    std::uint64_t excess = 0;
    bool reclaimable = false;
    std::size_t sites = 0;         // sites with live objects in it
    std::uint64_t pool_live = 0;   // kmalloc-N rows: kleakd's live objects in every kmalloc-N row
};

// Per site (by SiteId): its share of an excess, when its cache has one.
struct UntrackedShare {
    std::string cache;
    std::uint64_t estimate = 0;       // of this site's outstanding, how many are freed unseen
    std::uint64_t cache_live = 0;     // kleakd's count for the cache
    std::uint64_t kernel_active = 0;  // the kernel's (for kmalloc-N, every cache of size N)
};

struct Reconciliation {
    std::vector<CacheRow> caches;                      // by live objects, most first
    std::vector<std::optional<UntrackedShare>> sites;  // by SiteId (tracker.sites().size())
    bool slabinfo = false;                             // the kernel's counts were read
};

// O(classes + caches). `slabinfo` empty: kleakd's side only.
Reconciliation reconcile_caches(const Tracker& tracker, const CacheNames& names,
                                std::span<const SlabinfoRow> slabinfo, const ReconcileRules& rules = {});

// Every site's main cache (the one most of its live objects are in; its first
// when none is live), by SiteId: its key (slab_caches.h), 0 when unknown.
std::vector<std::uint64_t> site_cache_keys(const Tracker& tracker);
// The same, with family_turnover_key() for vmalloc and percpu sites: the
// keys the frees of objects made before tracing are counted under.
std::vector<std::uint64_t> site_turnover_keys(const Tracker& tracker);
// Their names: "" for 0.
std::vector<std::string> site_cache_names(std::span<const std::uint64_t> keys, const CacheNames& names);
inline std::vector<std::string> site_cache_names(const Tracker& tracker, const CacheNames& names) {
    return site_cache_names(site_cache_keys(tracker), names);
}

// Kernel cache addresses the tracker has met that `names` lacks.
std::vector<std::uint64_t> unnamed_caches(const Tracker& tracker, const CacheNames& names);

// {"slabinfo": bool, "caches_total", "caches_with_excess", "caches": [{"cache",
// "live", "live_bytes", "kernel_active", "kernel_total", ["kernel_pool_active", "pool_live",]
// "coverage", "excess", "reclaimable", "sites"}]}; top 0: all.
nlohmann::json caches_to_json(const Reconciliation& result, std::size_t top);

}  // namespace kleak::core
