// Each call site's outstanding count and bytes, sampled on a fixed period and
// kept at falling resolution: the record a site's verdict is judged from
// (verdict.h) and `kleakctl history` shows. Pure: the caller samples the
// tracker's aggregates with the records' clock.
//
// Resolutions (kHistoryTiers): every sample for 90 intervals (91 samples:
// 15 min at the default 10 s), then one a minute for 2 hours, one every 10
// minutes for a day, one every 2 hours for 30 days. A coarser tier keeps the
// first sample of each of its periods (of each sample, when the interval is
// longer). At most kMaxHistoryPoints points of 16 bytes a site (11.2 KiB),
// reached after 30 days; the rings grow as they fill. A restarted daemon
// adopts the histories its last snapshot carried (history_section.h).
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "tracker.h"

namespace kleak::core {

struct HistoryPoint {
    std::uint64_t t_ns = 0;  // the records' clock (CLOCK_MONOTONIC)
    std::uint64_t outstanding = 0;
    std::uint64_t bytes = 0;
    bool operator==(const HistoryPoint&) const = default;
};

struct HistoryTier {
    std::uint64_t period_ns;  // 0: the sampling period itself (tier 0)
    std::uint32_t capacity;   // newest points kept
};
inline constexpr std::array<HistoryTier, 4> kHistoryTiers{{
    {0, 91},
    {60'000'000'000, 120},
    {600'000'000'000, 144},
    {7'200'000'000'000, 360},
}};
inline constexpr std::size_t kMaxHistoryPoints = 91 + 120 + 144 + 360;
// The longest sampling interval: every tier then spans less than 2^32 ms (a
// point keeps its time in 32 bits).
inline constexpr std::uint64_t kMaxHistoryIntervalNs = 600'000'000'000;
// How far a ring's oldest point may lie before its newest: times are kept
// modulo 2^32 ms (49.7 days). Sampling alone never reaches it (the coarsest
// tier spans 30 days); a history adopted across a long gap can.
inline constexpr std::uint64_t kMaxHistorySpanNs = 49ull * 86400 * 1'000'000'000;

// A site's points at every resolution, oldest first: what a snapshot saves
// and a restarted daemon adopts.
using HistoryTiers = std::array<std::vector<HistoryPoint>, kHistoryTiers.size()>;

// One site's series at one resolution: a ring of the newest `capacity`
// points. A point keeps its time as milliseconds modulo 2^32, read back
// against the newest point's full time: exact while the ring spans less than
// 49.7 days, which push() keeps (kMaxHistorySpanNs).
class HistoryRing {
public:
    explicit HistoryRing(std::uint32_t capacity) : capacity_(capacity) {}
    // Times must not go back. Drops the points kMaxHistorySpanNs or more
    // older than `point`.
    void push(const HistoryPoint& point);
    std::size_t size() const { return points_.size(); }
    bool empty() const { return points_.empty(); }
    HistoryPoint at(std::size_t i) const;  // 0: the oldest kept
    void points_into(std::vector<HistoryPoint>& out) const;  // oldest first, into a reused vector
    std::size_t memory_bytes() const { return points_.capacity() * sizeof(Packed); }

private:
    void drop_oldest();

    struct Packed {
        std::uint32_t t_ms;         // time in ms, modulo 2^32
        std::uint32_t outstanding;  // saturating
        std::uint64_t bytes;
    };
    std::uint32_t capacity_;
    std::uint32_t head_ = 0;       // the oldest, once full
    std::uint64_t newest_ns_ = 0;  // the newest point's full time
    std::vector<Packed> points_;
};

// The histories of every site, indexed by SiteId like Tracker::sites().
class SiteHistories {
public:
    explicit SiteHistories(std::uint64_t period_ns) : period_ns_(period_ns) {}
    std::uint64_t period_ns() const { return period_ns_; }

    // One sample of every site at now_ns (sites new since the last sample
    // start their history here).
    void sample(std::span<const SiteStats> sites, std::uint64_t now_ns);
    // Tier `tier` of `site`; empty when the site has none.
    std::vector<HistoryPoint> series(SiteId site, std::size_t tier = 0) const;
    void series_into(SiteId site, std::size_t tier, std::vector<HistoryPoint>& out) const;
    bool has_history(SiteId site) const;
    // Gives `site`, which has no history yet, the points `tiers` holds (each
    // oldest first, times rising, at most its tier's capacity).
    void adopt(SiteId site, const HistoryTiers& tiers);
    std::size_t site_count() const { return sites_.size(); }
    std::uint64_t samples() const { return samples_; }
    std::size_t memory_bytes() const;
    void clear() { sites_.clear(); samples_ = 0; }

private:
    struct Site {
        std::array<HistoryRing, kHistoryTiers.size()> tiers{
            HistoryRing(kHistoryTiers[0].capacity), HistoryRing(kHistoryTiers[1].capacity),
            HistoryRing(kHistoryTiers[2].capacity), HistoryRing(kHistoryTiers[3].capacity)};
    };
    std::uint64_t period_ns_;
    std::uint64_t samples_ = 0;
    std::vector<Site> sites_;
};

}  // namespace kleak::core
