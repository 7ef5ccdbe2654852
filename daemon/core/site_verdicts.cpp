#include "site_verdicts.h"

#include <absl/container/flat_hash_map.h>

#include <algorithm>
#include <cmath>
#include <string>

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

void SiteVerdicts::sample(std::span<const SiteStats> sites, std::uint64_t now_ns, const CacheEvidence& caches) {
    if (histories_.samples() == 0) {
        first_sample_ns_ = now_ns;
        if (restored_) restart_ns_ = now_ns - now_ns % 1'000'000;
    }
    if (!pending_.empty()) adopt_pending(sites);
    histories_.sample(sites, now_ns);
    if (caches.unseen_frees) turnover_.sample(now_ns, *caches.unseen_frees);
    judgements_.resize(sites.size(), no_history("no allocations yet"));
    growing_ = 0;
    std::vector<HistoryPoint> history;  // reused: one allocation per sample, not per site
    for (SiteId id = 0; id < sites.size(); ++id) {
        if (sites[id].allocs == 0) continue;  // frees only: nothing to judge
        histories_.series_into(id, 0, history);
        trim_restored(history);
        const UntrackedShare* share =
            id < caches.untracked.size() && caches.untracked[id] ? &*caches.untracked[id] : nullptr;
        judgements_[id] = judge_site(history, sites[id], rules_, share);
    }
    if (caches.unseen_frees) weigh_turnover(sites, caches.site_caches);
    for (SiteId id = 0; id < sites.size(); ++id) {
        SiteJudgement& j = judgements_[id];
        // Allocations made before tracing started are invisible, so every
        // cache fills up from empty in kleakd's first minutes: while the
        // history that shows growth began with kleakd's, growth must be
        // steadier (verdict.h), and the reason says so.
        // (History times are kept to the millisecond.)
        if (j.verdict == Verdict::growing && j.history_ns < rules_.window_ns &&
            j.window_start_ns < first_sample_ns_ + 1'000'000) {
            const std::string started =
                "kleakd started only " + std::to_string((now_ns - first_sample_ns_) / 1'000'000'000) + "s ago";
            if (j.rising_share < rules_.min_rising_fraction_first_window) {
                j.verdict = Verdict::young;
                j.reason = "not judged yet, maybe filling up: " + started + ", caches fill up from empty then, and only " +
                           std::to_string(static_cast<int>(100 * j.rising_share)) +
                           "% of its changes rise (a leak in kleakd's first window needs " +
                           std::to_string(static_cast<int>(std::lround(100 * rules_.min_rising_fraction_first_window))) +
                           "%): " + j.reason;
            } else {
                j.reason += "; " + started + " and caches also fill up from empty then: the full window tells them apart";
            }
        }
        growing_ += j.verdict == Verdict::growing;
    }
}

// A second look at the sites judged growing in a cache whose objects from
// before tracing are being freed. The frees must account for the net rise
// of all the cache's sites together, and for the site's own rise (each to a
// tenth, for frees still in flight, at least 2): a cache that rose by more
// than they explain may hold a leak, and the frees cannot say which site's
// rise they explain, so then every site of it keeps its verdict. Counted
// rises (newest sample minus first), as the frees are counted over the same
// samples; summed with their signs, as the cache's count moves: in a busy
// kmalloc cache hundreds of sites wander up and down, and their ups alone
// would add up to a rise the cache never made.
void SiteVerdicts::weigh_turnover(std::span<const SiteStats> sites, std::span<const std::uint64_t> site_caches) {
    const auto rise = [&](SiteId id) {
        return static_cast<double>(std::max<std::int64_t>(0, judgements_[id].window_rise));
    };
    absl::flat_hash_map<std::uint64_t, double> cache_rise;
    bool any = false;
    for (SiteId id = 0; id < sites.size() && id < site_caches.size(); ++id) {
        if (site_caches[id] == 0 || sites[id].allocs == 0) continue;
        cache_rise[site_caches[id]] += static_cast<double>(judgements_[id].window_rise);
        any = any || judgements_[id].verdict == Verdict::growing;
    }
    if (!any) return;
    std::vector<HistoryPoint> history;
    for (SiteId id = 0; id < sites.size() && id < site_caches.size(); ++id) {
        if (site_caches[id] == 0 || judgements_[id].verdict != Verdict::growing || rise(id) <= 0) continue;
        const std::uint64_t unseen = turnover_.since(site_caches[id], judgements_[id].window_start_ns);
        const double net = cache_rise[site_caches[id]];
        const auto explained = [&](double r) { return r - static_cast<double>(unseen) <= std::max(2.0, r / 10); };
        // The site's own rise too: a neighbour whose objects were freed
        // (seen) lowers the net, not the leak.
        if (unseen == 0 || !explained(net) || !explained(rise(id))) continue;
        const double basis = std::max(net, rise(id));  // > 0: this site rose
        const TurnoverShare share{std::min(static_cast<double>(unseen), basis) * rise(id) / basis, unseen};
        histories_.series_into(id, 0, history);
        trim_restored(history);
        judgements_[id] = judge_site(history, sites[id], rules_, nullptr, share);
    }
}

void SiteVerdicts::trim_restored(std::vector<HistoryPoint>& history) const {
    // Restored points counted allocations this daemon cannot see: not judged.
    if (!history.empty() && history.front().t_ns < restart_ns_)
        history.erase(history.begin(),
                      std::lower_bound(history.begin(), history.end(), restart_ns_,
                                       [](const HistoryPoint& p, std::uint64_t t) { return p.t_ns < t; }));
}

SiteJudgement SiteVerdicts::judgement(SiteId site) const {
    if (site < judgements_.size()) return judgements_[site];
    return no_history("no history yet: new since the last sample");
}

std::size_t SiteVerdicts::memory_bytes() const {
    std::size_t bytes = histories_.memory_bytes() + judgements_.capacity() * sizeof(SiteJudgement);
    for (const SiteJudgement& j : judgements_) bytes += j.reason.capacity();
    bytes += pending_.capacity() * sizeof(SavedSites::value_type) + turnover_.memory_bytes();
    for (const auto& [address, tiers] : pending_)
        for (const auto& points : tiers) bytes += points.capacity() * sizeof(HistoryPoint);
    return bytes;
}

void SiteVerdicts::clear() {
    histories_.clear();
    turnover_.clear();
    judgements_.clear();
    pending_.clear();
    restored_ = false;
    restart_ns_ = 0;
    first_sample_ns_ = 0;
    growing_ = 0;
}

}  // namespace kleak::core
