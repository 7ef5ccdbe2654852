// The `leaks` query: top call sites by outstanding bytes or count. Without an
// age filter it reads the per-site aggregates (O(sites)). With one it adds up
// the tracker's age index (O(epochs x classes)) when it keeps one (the
// daemon's does): to within the epoch the threshold falls in, at most
// max(16.8 ms, min_age / 16) (age_index.h); otherwise it scans the live
// allocations (O(outstanding)), to the tracker's 1.05 ms resolution. Either
// way ages round down (tracker.h, allocation_class.h): a min_age filter never
// counts an allocation younger than asked, and `oldest_age_ns` is never more
// than the true age.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "site_verdicts.h"
#include "symbolizer.h"
#include "tracker.h"

namespace kleak::core {

enum class LeakSort { bytes, count };

struct LeaksQuery {
    std::size_t top = 20;
    std::uint64_t min_age_ns = 0;  // only allocations surely at least this old count
    std::uint64_t now_ns = 0;      // the records' clock (CLOCK_MONOTONIC), from the caller
    LeakSort sort = LeakSort::bytes;
    std::span<const std::string> site_caches;  // by SiteId (site_cache_names()); empty: rows carry no cache
    std::optional<Family> family;              // only this family's sites (totals too); nullopt: all
};

struct LeakRow {
    Family family = Family::slab;
    std::string site;
    std::string function;
    std::uint64_t outstanding = 0;
    std::uint64_t outstanding_bytes = 0;
    std::uint64_t allocs = 0;
    std::uint64_t frees = 0;
    std::uint64_t replaced = 0;
    std::optional<std::uint64_t> oldest_age_ns;  // known when the query scanned allocations
    std::optional<Verdict> verdict;              // when the caller keeps verdicts (the daemon)
    std::optional<std::string> cache;            // when the query brings site_caches
};

struct LeaksResult {
    std::uint64_t outstanding = 0;  // over every site that passed the filter
    std::uint64_t outstanding_bytes = 0;
    std::vector<LeakRow> rows;
};

LeaksResult query_leaks(const Tracker& tracker, const LeaksQuery& query, Symbolizer& symbolizer,
                        const SiteVerdicts* verdicts = nullptr);

nlohmann::json leaks_to_json(const LeaksResult& result, const LeaksQuery& query);

}  // namespace kleak::core
