#include "site_verdicts.h"

namespace kleak::core {

void SiteVerdicts::sample(std::span<const SiteStats> sites, std::uint64_t now_ns) {
    histories_.sample(sites, now_ns);
    judgements_.resize(sites.size());
    growing_ = 0;
    std::vector<HistoryPoint> history;  // reused: one allocation per sample, not per site
    for (SiteId id = 0; id < sites.size(); ++id) {
        if (sites[id].allocs == 0) continue;  // frees only: nothing to judge
        histories_.series_into(id, 0, history);
        judgements_[id] = judge_site(history, sites[id], rules_);
        growing_ += judgements_[id].verdict == Verdict::growing;
    }
    last_sample_ns_ = now_ns;
}

SiteJudgement SiteVerdicts::judgement(SiteId site) const {
    if (site < judgements_.size()) return judgements_[site];
    SiteJudgement young;
    young.reason = "no history yet";
    return young;
}

std::size_t SiteVerdicts::memory_bytes() const {
    std::size_t bytes = histories_.memory_bytes() + judgements_.capacity() * sizeof(SiteJudgement);
    for (const SiteJudgement& j : judgements_) bytes += j.reason.capacity();
    return bytes;
}

void SiteVerdicts::clear() {
    histories_.clear();
    judgements_.clear();
    last_sample_ns_ = 0;
    growing_ = 0;
}

}  // namespace kleak::core
