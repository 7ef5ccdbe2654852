#include "leaks_query.h"

#include <algorithm>

namespace kleak::core {

namespace {

struct Candidate {
    SiteId site;
    std::uint64_t count;
    std::uint64_t bytes;
    std::optional<std::uint64_t> oldest_ts;
};

std::vector<Candidate> from_aggregates(const Tracker& tracker) {
    std::vector<Candidate> out;
    const auto& sites = tracker.sites();
    for (SiteId id = 0; id < sites.size(); ++id) {
        if (sites[id].outstanding > 0) out.push_back({id, sites[id].outstanding, sites[id].outstanding_bytes, {}});
    }
    return out;
}

std::vector<Candidate> from_live_allocations(const Tracker& tracker, std::uint64_t born_before) {
    std::vector<Candidate> out;
    const std::vector<SiteAge> ages = tracker.ages_indexed() ? tracker.outstanding_born_by_epochs(born_before)
                                                             : tracker.outstanding_born_by(born_before);
    for (SiteId id = 0; id < ages.size(); ++id) {
        if (ages[id].count > 0) out.push_back({id, ages[id].count, ages[id].bytes, ages[id].oldest_ts_ns});
    }
    return out;
}

}  // namespace

LeaksResult query_leaks(const Tracker& tracker, const LeaksQuery& query, Symbolizer& symbolizer,
                        const SiteVerdicts* verdicts) {
    std::vector<Candidate> candidates;
    if (query.min_age_ns == 0) {
        candidates = from_aggregates(tracker);
    } else {
        const std::uint64_t born_before = query.now_ns > query.min_age_ns ? query.now_ns - query.min_age_ns : 0;
        candidates = from_live_allocations(tracker, born_before);
    }

    if (query.family) {
        std::erase_if(candidates,
                      [&](const Candidate& c) { return tracker.sites()[c.site].family != *query.family; });
    }
    LeaksResult result;
    for (const Candidate& c : candidates) {
        result.outstanding += c.count;
        result.outstanding_bytes += c.bytes;
    }
    const auto key = [&query](const Candidate& c) {
        return query.sort == LeakSort::bytes ? std::pair(c.bytes, c.count) : std::pair(c.count, c.bytes);
    };
    const std::size_t n = std::min(query.top, candidates.size());
    std::partial_sort(candidates.begin(), candidates.begin() + static_cast<std::ptrdiff_t>(n), candidates.end(),
                      [&](const Candidate& a, const Candidate& b) {
                          if (key(a) != key(b)) return key(a) > key(b);
                          return a.site < b.site;
                      });
    for (std::size_t i = 0; i < n; ++i) {
        const Candidate& c = candidates[i];
        const SiteStats& s = tracker.sites()[c.site];
        const Symbol symbol = symbolizer.resolve(s.call_site);
        LeakRow row;
        row.family = s.family;
        row.site = format_site(s.call_site, symbol);
        row.function = symbol.known() ? symbol.function : row.site;
        row.outstanding = c.count;
        row.outstanding_bytes = c.bytes;
        row.allocs = s.allocs;
        row.frees = s.frees;
        row.replaced = s.replaced;
        if (c.oldest_ts) row.oldest_age_ns = query.now_ns > *c.oldest_ts ? query.now_ns - *c.oldest_ts : 0;
        if (verdicts) row.verdict = verdicts->judgement(c.site).verdict;
        if (c.site < query.site_caches.size()) row.cache = query.site_caches[c.site];
        result.rows.push_back(std::move(row));
    }
    return result;
}

nlohmann::json leaks_to_json(const LeaksResult& result, const LeaksQuery& query) {
    nlohmann::json sites = nlohmann::json::array();
    for (const LeakRow& row : result.rows) {
        nlohmann::json site = {
            {"family", family_name(row.family)},
            {"site", row.site},
            {"function", row.function},
            {"outstanding", row.outstanding},
            {"outstanding_bytes", row.outstanding_bytes},
            {"allocs", row.allocs},
            {"frees", row.frees},
            {"replaced", row.replaced},
        };
        if (row.oldest_age_ns) site["oldest_age_ns"] = *row.oldest_age_ns;
        if (row.verdict) site["verdict"] = verdict_name(*row.verdict);
        if (row.cache) site["cache"] = *row.cache;
        sites.push_back(std::move(site));
    }
    nlohmann::json out = {
        {"sort", query.sort == LeakSort::bytes ? "bytes" : "count"},
        {"min_age_ns", query.min_age_ns},
        {"outstanding", result.outstanding},
        {"outstanding_bytes", result.outstanding_bytes},
        {"sites", std::move(sites)},
    };
    if (query.family) out["family"] = family_name(*query.family);
    return out;
}

}  // namespace kleak::core
