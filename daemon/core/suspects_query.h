// The `suspects` query: call sites ranked by how likely they leak: growing
// ones first, by bytes gained per hour, then young, steady and
// untracked-frees ones; each with its verdict and reasons (verdict.h) and the
// ages of its live allocations. Also `history`: one site's series.
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

struct SuspectsQuery {
    std::size_t top = 20;
    std::uint64_t now_ns = 0;  // the records' clock (CLOCK_MONOTONIC)
    std::span<const std::string> site_caches;  // by SiteId (site_cache_names()); may be empty
    std::optional<Family> family;              // only this family's sites (counts too); nullopt: all
};

struct SuspectRow {
    Family family = Family::slab;
    std::string site;
    std::string function;
    std::string cache;  // "" when unknown
    SiteJudgement judgement;
    std::uint64_t outstanding = 0;
    std::uint64_t outstanding_bytes = 0;
    // Ages of the live allocations (tracker resolution, rounded down).
    std::uint64_t age_p50_ns = 0, age_p90_ns = 0, oldest_age_ns = 0;
};

// The ranked sites past `top`, summed: what kleakd-exporter shows as one
// site="other" series without asking for (and the daemon building) every row.
struct SuspectsRest {
    std::uint64_t sites = 0;
    std::uint64_t outstanding = 0;
    std::uint64_t outstanding_bytes = 0;
    double growth_per_hour = 0;
    double growth_bytes_per_hour = 0;
};

struct SuspectsResult {
    std::uint64_t growing = 0;  // sites judged growing
    std::uint64_t sites = 0;    // sites with something outstanding
    std::vector<SuspectRow> rows;
    SuspectsRest rest;
};

// O(sites) to rank and to sum the rest, and one pass over the live
// allocations for the ages of the rows shown.
SuspectsResult query_suspects(const Tracker& tracker, const SiteVerdicts& verdicts, const SuspectsQuery& query,
                              Symbolizer& symbolizer);
nlohmann::json suspects_to_json(const SuspectsResult& result, const SiteVerdicts& verdicts);

// The site a user names: "func+0x1f" as reports print it, a bare function
// name (its first site by outstanding bytes), or a hex address.
std::optional<SiteId> find_site(const Tracker& tracker, const std::string& name, Symbolizer& symbolizer);

// Adds each site's verdict to a report's or snapshot's `sites` rows (matched
// by their "address"): family ("kmalloc" or "kmem_cache"), verdict, reasons,
// growth_per_hour, growth_bytes_per_hour; and returns the verdicts' summary
// for the document: samples, growing, rules, and restart_ns when the
// histories hold an earlier daemon's points. With site_caches (by SiteId),
// each row's "cache" too.
nlohmann::json annotate_verdicts(nlohmann::json& sites, const Tracker& tracker, const SiteVerdicts& verdicts,
                                 std::span<const std::string> site_caches = {});

// One site's history at `tier` (0: the sampling period; kHistoryTiers), with
// "restart_ns" when it holds points an earlier daemon sampled.
nlohmann::json history_to_json(const Tracker& tracker, const SiteVerdicts& verdicts, SiteId site, std::size_t tier,
                               Symbolizer& symbolizer);

}  // namespace kleak::core
