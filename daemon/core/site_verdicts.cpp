#include "site_verdicts.h"

#include <algorithm>

namespace kleak::core {

namespace {

SiteJudgement no_history(const char* why) {
    SiteJudgement j;
    j.reason = why;
    return j;
}

}  // namespace

void SiteVerdicts::restore(SavedSites saved) {
    restored_ = !saved.empty();
    pending_ = std::move(saved);
}

// A site new since the last sample takes the history restored for its
// address, if one was. Only from before this daemon's first sample: anything
// later cannot be this boot's past (a doctored file), and would put the
// site's times out of order.
void SiteVerdicts::adopt_pending(std::span<const SiteStats> sites) {
    for (SiteId id = 0; id < sites.size() && !pending_.empty(); ++id) {
        if (sites[id].allocs == 0 || histories_.has_history(id)) continue;
        const auto it = pending_.find(sites[id].call_site);
        if (it == pending_.end()) continue;
        const bool before_start = std::all_of(it->second.begin(), it->second.end(), [&](const auto& points) {
            return points.empty() || points.back().t_ns < restart_ns_;
        });
        if (before_start) histories_.adopt(id, it->second);
        pending_.erase(it);
    }
}

void SiteVerdicts::sample(std::span<const SiteStats> sites, std::uint64_t now_ns,
                          std::span<const std::optional<UntrackedShare>> untracked) {
    if (histories_.samples() == 0) {
        first_sample_ns_ = now_ns;
        if (restored_) restart_ns_ = now_ns - now_ns % 1'000'000;
    }
    if (!pending_.empty()) adopt_pending(sites);
    histories_.sample(sites, now_ns);
    judgements_.resize(sites.size(), no_history("no allocations yet"));
    growing_ = 0;
    std::vector<HistoryPoint> history;  // reused: one allocation per sample, not per site
    for (SiteId id = 0; id < sites.size(); ++id) {
        if (sites[id].allocs == 0) continue;  // frees only: nothing to judge
        histories_.series_into(id, 0, history);
        // Restored points counted allocations this daemon cannot see: not judged.
        if (!history.empty() && history.front().t_ns < restart_ns_)
            history.erase(history.begin(),
                          std::lower_bound(history.begin(), history.end(), restart_ns_,
                                           [](const HistoryPoint& p, std::uint64_t t) { return p.t_ns < t; }));
        const UntrackedShare* share = id < untracked.size() && untracked[id] ? &*untracked[id] : nullptr;
        SiteJudgement& j = judgements_[id] = judge_site(history, sites[id], rules_, share);
        // Allocations made before tracing started are invisible, so every
        // cache fills up from empty in kleakd's first minutes: say so while
        // the history that shows growth began with kleakd's.
        // (History times are kept to the millisecond.)
        if (j.verdict == Verdict::growing && j.history_ns < rules_.window_ns &&
            history.front().t_ns < first_sample_ns_ + 1'000'000)
            j.reason += "; kleakd started only " + std::to_string((now_ns - first_sample_ns_) / 1'000'000'000) +
                        "s ago and caches also fill up from empty then: the full window tells them apart";
        growing_ += j.verdict == Verdict::growing;
    }
}

SiteJudgement SiteVerdicts::judgement(SiteId site) const {
    if (site < judgements_.size()) return judgements_[site];
    return no_history("no history yet: new since the last sample");
}

std::size_t SiteVerdicts::memory_bytes() const {
    std::size_t bytes = histories_.memory_bytes() + judgements_.capacity() * sizeof(SiteJudgement);
    for (const SiteJudgement& j : judgements_) bytes += j.reason.capacity();
    bytes += pending_.capacity() * sizeof(SavedSites::value_type);
    for (const auto& [address, tiers] : pending_)
        for (const auto& points : tiers) bytes += points.capacity() * sizeof(HistoryPoint);
    return bytes;
}

void SiteVerdicts::clear() {
    histories_.clear();
    judgements_.clear();
    pending_.clear();
    restored_ = false;
    restart_ns_ = 0;
    first_sample_ns_ = 0;
    growing_ = 0;
}

}  // namespace kleak::core
