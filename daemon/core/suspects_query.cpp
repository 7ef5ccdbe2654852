#include "suspects_query.h"

#include <absl/container/flat_hash_map.h>

#include <algorithm>
#include <cstdlib>

namespace kleak::core {

namespace {

// Leak-likeness: growing, then young (not judged yet), reclaimable (growing
// caches), steady, and last untracked-frees (whose counts overstate).
int rank_of(Verdict v) {
    switch (v) {
        case Verdict::growing: return 0;
        case Verdict::young: return 1;
        case Verdict::reclaimable: return 2;
        case Verdict::steady: return 3;
        case Verdict::untracked_frees: return 4;
    }
    return 5;
}

std::uint64_t percentile(std::vector<std::uint64_t>& values, double p) {
    if (values.empty()) return 0;
    const auto k = static_cast<std::size_t>(p * static_cast<double>(values.size() - 1));
    std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(k), values.end());
    return values[k];
}

nlohmann::json rules_json(const SiteVerdicts& verdicts) {
    const VerdictRules& r = verdicts.rules();
    return {{"interval_ns", verdicts.period_ns()},
            {"window_ns", r.window_ns},
            {"recent_ns", r.recent_ns},
            {"min_rise", r.min_rise},
            {"min_rising_share", r.min_rising_fraction},
            {"min_rising_share_first_window", r.min_rising_fraction_first_window}};
}

nlohmann::json judgement_json(const SiteJudgement& j) {
    nlohmann::json out = {{"verdict", verdict_name(j.verdict)},
                          {"reasons", nlohmann::json::array({j.reason})},
                          {"growth_per_hour", j.growth_per_hour},
                          {"growth_bytes_per_hour", j.growth_bytes_per_hour},
                          {"history_ns", j.history_ns}};
    if (j.untracked_estimate > 0) out["untracked_estimate"] = j.untracked_estimate;
    return out;
}

std::string cache_of(std::span<const std::string> site_caches, SiteId site) {
    return site < site_caches.size() ? site_caches[site] : std::string();
}

}  // namespace

SuspectsResult query_suspects(const Tracker& tracker, const SiteVerdicts& verdicts, const SuspectsQuery& query,
                              Symbolizer& symbolizer) {
    struct Candidate {
        SiteId site;
        SiteJudgement judgement;
    };
    const auto& sites = tracker.sites();
    std::vector<Candidate> candidates;
    SuspectsResult result;
    for (SiteId id = 0; id < sites.size(); ++id) {
        if (sites[id].outstanding == 0) continue;
        if (query.family && sites[id].family != *query.family) continue;
        candidates.push_back({id, verdicts.judgement(id)});
        result.growing += candidates.back().judgement.verdict == Verdict::growing;
    }
    result.sites = candidates.size();
    const std::size_t n = std::min(query.top, candidates.size());
    std::partial_sort(candidates.begin(), candidates.begin() + static_cast<std::ptrdiff_t>(n), candidates.end(),
                      [&](const Candidate& a, const Candidate& b) {
                          const int ra = rank_of(a.judgement.verdict), rb = rank_of(b.judgement.verdict);
                          if (ra != rb) return ra < rb;
                          if (a.judgement.growth_bytes_per_hour != b.judgement.growth_bytes_per_hour)
                              return a.judgement.growth_bytes_per_hour > b.judgement.growth_bytes_per_hour;
                          if (sites[a.site].outstanding_bytes != sites[b.site].outstanding_bytes)
                              return sites[a.site].outstanding_bytes > sites[b.site].outstanding_bytes;
                          return a.site < b.site;
                      });
    for (std::size_t i = n; i < candidates.size(); ++i) {
        const SiteStats& s = sites[candidates[i].site];
        result.rest.sites += 1;
        result.rest.outstanding += s.outstanding;
        result.rest.outstanding_bytes += s.outstanding_bytes;
        result.rest.growth_per_hour += candidates[i].judgement.growth_per_hour;
        result.rest.growth_bytes_per_hour += candidates[i].judgement.growth_bytes_per_hour;
    }
    candidates.resize(n);

    // Birth times of the rows' live allocations, in one pass.
    std::vector<int> row_of(sites.size(), -1);
    for (std::size_t i = 0; i < n; ++i) row_of[candidates[i].site] = static_cast<int>(i);
    std::vector<std::vector<std::uint64_t>> ages(n);
    if (n > 0) {
        tracker.for_each_outstanding([&](std::uint64_t, const OutstandingAllocation& a) {
            if (a.site >= row_of.size() || row_of[a.site] < 0) return;
            ages[static_cast<std::size_t>(row_of[a.site])].push_back(query.now_ns > a.ts_ns ? query.now_ns - a.ts_ns
                                                                                             : 0);
        });
    }
    for (std::size_t i = 0; i < n; ++i) {
        const SiteStats& s = sites[candidates[i].site];
        const Symbol symbol = symbolizer.resolve(s.call_site);
        SuspectRow row;
        row.family = s.family;
        row.site = format_site(s.call_site, symbol);
        row.function = symbol.known() ? symbol.function : row.site;
        row.cache = cache_of(query.site_caches, candidates[i].site);
        row.judgement = std::move(candidates[i].judgement);
        row.outstanding = s.outstanding;
        row.outstanding_bytes = s.outstanding_bytes;
        row.age_p50_ns = percentile(ages[i], 0.5);
        row.age_p90_ns = percentile(ages[i], 0.9);
        row.oldest_age_ns = ages[i].empty() ? 0 : *std::max_element(ages[i].begin(), ages[i].end());
        result.rows.push_back(std::move(row));
    }
    return result;
}

nlohmann::json suspects_to_json(const SuspectsResult& result, const SiteVerdicts& verdicts) {
    nlohmann::json rows = nlohmann::json::array();
    for (const SuspectRow& row : result.rows) {
        nlohmann::json j = {{"family", family_name(row.family)},
                            {"site", row.site},
                            {"function", row.function},
                            {"cache", row.cache},
                            {"outstanding", row.outstanding},
                            {"outstanding_bytes", row.outstanding_bytes},
                            {"age_p50_ns", row.age_p50_ns},
                            {"age_p90_ns", row.age_p90_ns},
                            {"oldest_age_ns", row.oldest_age_ns}};
        j.update(judgement_json(row.judgement));
        rows.push_back(std::move(j));
    }
    return {{"growing", result.growing},
            {"sites", result.sites},
            {"samples", verdicts.histories().samples()},
            {"rules", rules_json(verdicts)},
            {"suspects", std::move(rows)},
            {"rest",
             {{"sites", result.rest.sites},
              {"outstanding", result.rest.outstanding},
              {"outstanding_bytes", result.rest.outstanding_bytes},
              {"growth_per_hour", result.rest.growth_per_hour},
              {"growth_bytes_per_hour", result.rest.growth_bytes_per_hour}}}};
}

nlohmann::json annotate_verdicts(nlohmann::json& sites, const Tracker& tracker, const SiteVerdicts& verdicts,
                                 std::span<const std::string> site_caches) {
    absl::flat_hash_map<std::uint64_t, SiteId> by_address;
    for (SiteId id = 0; id < tracker.sites().size(); ++id) by_address.emplace(tracker.sites()[id].call_site, id);
    std::uint64_t growing = 0;
    for (nlohmann::json& row : sites) {
        const auto address = row.find("address");
        if (address == row.end() || !address->is_string()) continue;
        const auto it = by_address.find(std::strtoull(address->get_ref<const std::string&>().c_str(), nullptr, 16));
        if (it == by_address.end() || tracker.sites()[it->second].allocs == 0) continue;
        if (!site_caches.empty()) row["cache"] = cache_of(site_caches, it->second);
        row["family"] = family_name(tracker.sites()[it->second].family);
        const SiteJudgement j = verdicts.judgement(it->second);
        row["verdict"] = verdict_name(j.verdict);
        row["reasons"] = nlohmann::json::array({j.reason});
        row["growth_per_hour"] = j.growth_per_hour;
        row["growth_bytes_per_hour"] = j.growth_bytes_per_hour;
        growing += j.verdict == Verdict::growing;
    }
    nlohmann::json summary = {
        {"samples", verdicts.histories().samples()}, {"growing", growing}, {"rules", rules_json(verdicts)}};
    // Histories carried over from an earlier daemon: its points before this are not judged.
    if (verdicts.restart_ns() > 0) summary["restart_ns"] = verdicts.restart_ns();
    return summary;
}

std::optional<SiteId> find_site(const Tracker& tracker, const std::string& name, Symbolizer& symbolizer) {
    const auto& sites = tracker.sites();
    if (name.starts_with("0x")) {
        char* end = nullptr;
        const std::uint64_t address = std::strtoull(name.c_str(), &end, 16);
        for (SiteId id = 0; id < sites.size(); ++id)
            if (end != nullptr && *end == '\0' && sites[id].call_site == address && sites[id].allocs > 0) return id;
        return std::nullopt;
    }
    // Only sites that allocate have a history: one that only frees is not found.
    std::optional<SiteId> by_function;
    for (SiteId id = 0; id < sites.size(); ++id) {
        if (sites[id].allocs == 0) continue;
        const Symbol symbol = symbolizer.resolve(sites[id].call_site);
        if (format_site(sites[id].call_site, symbol) == name) return id;
        if (symbol.function == name &&
            (!by_function || sites[id].outstanding_bytes > sites[*by_function].outstanding_bytes))
            by_function = id;
    }
    return by_function;
}

nlohmann::json history_to_json(const Tracker& tracker, const SiteVerdicts& verdicts, SiteId site, std::size_t tier,
                               Symbolizer& symbolizer) {
    const SiteStats& s = tracker.sites()[site];
    const Symbol symbol = symbolizer.resolve(s.call_site);
    const std::vector<HistoryPoint> series = verdicts.histories().series(site, tier);
    nlohmann::json points = nlohmann::json::array();
    for (const HistoryPoint& p : series)
        points.push_back({{"t_ns", p.t_ns}, {"outstanding", p.outstanding}, {"bytes", p.bytes}});
    nlohmann::json j = {{"family", family_name(s.family)},
                        {"site", format_site(s.call_site, symbol)},
                        {"function", symbol.known() ? symbol.function : format_site(s.call_site, symbol)},
                        // A tier takes every sample when the interval is longer than its period.
                        {"interval_ns", std::max(verdicts.period_ns(), kHistoryTiers[tier].period_ns)},
                        {"outstanding", s.outstanding},
                        {"outstanding_bytes", s.outstanding_bytes},
                        {"points", std::move(points)}};
    // Points from before a restart: shown, but not judged (site_verdicts.h).
    if (!series.empty() && series.front().t_ns < verdicts.restart_ns()) j["restart_ns"] = verdicts.restart_ns();
    j.update(judgement_json(verdicts.judgement(site)));
    return j;
}

}  // namespace kleak::core
