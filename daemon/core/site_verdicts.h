// The daemon's running verdicts: every `period` it samples each site's
// outstanding count into its history (site_history.h) and judges every site
// again (verdict.h), so that queries read the last judgement instead of
// computing trends. Pure: the caller brings the tracker and the clock.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "site_history.h"
#include "tracker.h"
#include "verdict.h"

namespace kleak::core {

class SiteVerdicts {
public:
    SiteVerdicts(std::uint64_t period_ns, const VerdictRules& rules) : histories_(period_ns), rules_(rules) {}

    std::uint64_t period_ns() const { return histories_.period_ns(); }
    const VerdictRules& rules() const { return rules_; }
    const SiteHistories& histories() const { return histories_; }

    // Samples every site at now_ns and judges each again: `sites` are the
    // tracker's aggregates (Tracker::sites()), indexed by SiteId, and
    // `untracked` their shares of their caches' excess (Reconciliation::sites;
    // may be shorter, or empty when the kernel's counts are unknown).
    void sample(std::span<const SiteStats> sites, std::uint64_t now_ns,
                std::span<const std::optional<UntrackedShare>> untracked = {});
    // The last judgement of `site`: young, with no history, before its first.
    SiteJudgement judgement(SiteId site) const;
    // Sites judged growing at the last sample.
    std::size_t growing() const { return growing_; }
    std::size_t memory_bytes() const;

    // A reset of the tracker: its site ids start again.
    void clear();

private:
    SiteHistories histories_;
    VerdictRules rules_;
    std::vector<SiteJudgement> judgements_;  // by SiteId
    std::uint64_t first_sample_ns_ = 0;  // since start-up or clear()
    std::size_t growing_ = 0;
};

}  // namespace kleak::core
