#include "site_history.h"

#include <algorithm>
#include <limits>

namespace kleak::core {

namespace {

constexpr std::uint64_t kNsPerMs = 1'000'000;

std::uint32_t saturate32(std::uint64_t v) {
    return static_cast<std::uint32_t>(std::min<std::uint64_t>(v, std::numeric_limits<std::uint32_t>::max()));
}

}  // namespace

void HistoryRing::push(const HistoryPoint& point) {
    while (!points_.empty() && point.t_ns >= at(0).t_ns + kMaxHistorySpanNs) drop_oldest();
    newest_ns_ = point.t_ns;
    const Packed packed{static_cast<std::uint32_t>(point.t_ns / kNsPerMs), saturate32(point.outstanding),
                        point.bytes};
    if (points_.size() < capacity_) {
        // Grown by hand so that capacity never passes capacity_ (the bound
        // kMaxHistoryPoints states).
        if (points_.size() == points_.capacity())
            points_.reserve(std::min<std::size_t>(capacity_, std::max<std::size_t>(8, 2 * points_.size())));
        points_.push_back(packed);
        return;
    }
    points_[head_] = packed;
    head_ = (head_ + 1) % capacity_;
}

// Rare (a history adopted across a gap of weeks): a full ring is unrolled
// so that it fills again from the end.
void HistoryRing::drop_oldest() {
    std::rotate(points_.begin(), points_.begin() + head_, points_.end());
    points_.erase(points_.begin());
    head_ = 0;
}

HistoryPoint HistoryRing::at(std::size_t i) const {
    const Packed& p = points_[(head_ + i) % points_.size()];
    // How long before the newest point, in ms; unsigned arithmetic wraps the
    // modulo away.
    const std::uint32_t before_ms = static_cast<std::uint32_t>(newest_ns_ / kNsPerMs) - p.t_ms;
    // The newest point's own sub-millisecond part is kept; older points get
    // the same (times are compared and subtracted, not shown to the ns).
    return {newest_ns_ - std::uint64_t{before_ms} * kNsPerMs, p.outstanding, p.bytes};
}

void HistoryRing::points_into(std::vector<HistoryPoint>& out) const {
    out.clear();
    out.reserve(size());
    for (std::size_t i = 0; i < size(); ++i) out.push_back(at(i));
}

void SiteHistories::sample(std::span<const SiteStats> sites, std::uint64_t now_ns) {
    if (sites_.size() < sites.size()) sites_.resize(sites.size());
    for (std::size_t id = 0; id < sites.size(); ++id) {
        if (sites[id].allocs == 0) continue;  // a site that only frees has nothing to chart
        const HistoryPoint point{now_ns, sites[id].outstanding, sites[id].outstanding_bytes};
        auto& tiers = sites_[id].tiers;
        tiers[0].push(point);
        for (std::size_t t = 1; t < tiers.size(); ++t) {
            // A coarser tier takes a sample once its period has passed since
            // the last one it took (less half a sampling period, so that
            // jitter does not skip one).
            if (!tiers[t].empty() &&
                now_ns + period_ns_ / 2 < tiers[t].at(tiers[t].size() - 1).t_ns + kHistoryTiers[t].period_ns)
                continue;
            tiers[t].push(point);
        }
    }
    ++samples_;
}

std::vector<HistoryPoint> SiteHistories::series(SiteId site, std::size_t tier) const {
    std::vector<HistoryPoint> out;
    series_into(site, tier, out);
    return out;
}

void SiteHistories::series_into(SiteId site, std::size_t tier, std::vector<HistoryPoint>& out) const {
    out.clear();
    if (site < sites_.size() && tier < kHistoryTiers.size()) sites_[site].tiers[tier].points_into(out);
}

bool SiteHistories::has_history(SiteId site) const {
    if (site >= sites_.size()) return false;
    return std::any_of(sites_[site].tiers.begin(), sites_[site].tiers.end(),
                       [](const HistoryRing& r) { return !r.empty(); });
}

void SiteHistories::adopt(SiteId site, const HistoryTiers& tiers) {
    if (sites_.size() <= site) sites_.resize(site + 1);
    for (std::size_t t = 0; t < tiers.size(); ++t)
        for (const HistoryPoint& p : tiers[t]) sites_[site].tiers[t].push(p);
}

std::size_t SiteHistories::memory_bytes() const {
    std::size_t bytes = sites_.capacity() * sizeof(Site);
    for (const Site& s : sites_)
        for (const HistoryRing& r : s.tiers) bytes += r.memory_bytes();
    return bytes;
}

}  // namespace kleak::core
