// The daemon's running verdicts: every `period` it samples each site's
// outstanding count into its history (site_history.h) and judges every site
// again (verdict.h), so that queries read the last judgement instead of
// computing trends. Pure: the caller brings the tracker and the clock.
//
// A restarted daemon hands it the histories its last snapshot carried
// (restore()); each site takes its own at its first sample, found by call-site
// address. Those points counted allocations the new process cannot see (its
// outstanding counts start from zero), so they are shown, not judged: a
// verdict rests only on points sampled from restart_ns() on, and the `young`
// rule and the start-up note apply as for a fresh start.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "cache_turnover.h"
#include "history_section.h"
#include "site_history.h"
#include "tracker.h"
#include "verdict.h"

namespace kleak::core {

// What the caches say of the sites, each part may be empty (unknown).
struct CacheEvidence {
    // By SiteId: its share of its cache's excess (Reconciliation::sites).
    std::span<const std::optional<UntrackedShare>> untracked;
    // By SiteId: its main cache's key (site_cache_keys()).
    std::span<const std::uint64_t> site_caches;
    // Tracker::unseen_frees_by_cache(); null: none known.
    const absl::flat_hash_map<std::uint64_t, std::uint64_t>* unseen_frees = nullptr;
};

class SiteVerdicts {
public:
    SiteVerdicts(std::uint64_t period_ns, const VerdictRules& rules)
        : histories_(period_ns), rules_(rules), turnover_(rules.window_ns + period_ns) {}

    std::uint64_t period_ns() const { return histories_.period_ns(); }
    const VerdictRules& rules() const { return rules_; }
    const SiteHistories& histories() const { return histories_; }

    // Before the first sample: histories saved by an earlier daemon in this
    // boot (why_not_restore() agreed), by call-site address.
    void restore(SavedSites saved);
    // Restored histories no site has taken yet.
    const SavedSites& pending() const { return pending_; }
    // The first sample after a restore, to the millisecond (history times
    // are kept to it): points older than it came from the earlier daemon and
    // are not judged. 0 when nothing was restored (or before the first
    // sample).
    std::uint64_t restart_ns() const { return restart_ns_; }

    // Samples every site at now_ns and judges each again: `sites` are the
    // tracker's aggregates (Tracker::sites()), indexed by SiteId.
    void sample(std::span<const SiteStats> sites, std::uint64_t now_ns, const CacheEvidence& caches = {});
    // The last judgement of `site`: young, with no history, before its first.
    SiteJudgement judgement(SiteId site) const;
    // Sites judged growing at the last sample.
    std::size_t growing() const { return growing_; }
    std::size_t memory_bytes() const;

    // A reset of the tracker: its site ids start again; restored histories
    // are forgotten too.
    void clear();

private:
    void adopt_pending(std::span<const SiteStats> sites);
    void weigh_turnover(std::span<const SiteStats> sites, std::span<const std::uint64_t> site_caches);
    void trim_restored(std::vector<HistoryPoint>& history) const;

    SiteHistories histories_;
    VerdictRules rules_;
    CacheTurnover turnover_;
    std::vector<SiteJudgement> judgements_;  // by SiteId
    std::uint64_t first_sample_ns_ = 0;  // since start-up or clear()
    SavedSites pending_;                 // restored, not yet taken by a site
    bool restored_ = false;              // since start-up or clear()
    std::uint64_t restart_ns_ = 0;
    std::size_t growing_ = 0;
};

}  // namespace kleak::core
