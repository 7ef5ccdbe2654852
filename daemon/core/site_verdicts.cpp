#include "site_verdicts.h"

namespace kleak::core {

namespace {

SiteJudgement no_history(const char* why) {
    SiteJudgement j;
    j.reason = why;
    return j;
}

}  // namespace

void SiteVerdicts::sample(std::span<const SiteStats> sites, std::uint64_t now_ns,
                          std::span<const std::optional<UntrackedShare>> untracked) {
    if (histories_.samples() == 0) first_sample_ns_ = now_ns;
    histories_.sample(sites, now_ns);
    judgements_.resize(sites.size(), no_history("no allocations yet"));
    growing_ = 0;
    std::vector<HistoryPoint> history;  // reused: one allocation per sample, not per site
    for (SiteId id = 0; id < sites.size(); ++id) {
        if (sites[id].allocs == 0) continue;  // frees only: nothing to judge
        histories_.series_into(id, 0, history);
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
    return bytes;
}

void SiteVerdicts::clear() {
    histories_.clear();
    judgements_.clear();
    first_sample_ns_ = 0;
    growing_ = 0;
}

}  // namespace kleak::core
