#include "verdict.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <optional>
#include <vector>

#include "trend.h"

namespace kleak::core {

namespace {

constexpr std::array<std::string_view, 5> kNames{"young", "steady", "growing", "untracked-frees", "reclaimable"};
constexpr double kNsPerS = 1e9;
constexpr double kSecondsPerHour = 3600;
// Samples a trend is computed from (spread over the window): 120 pairs. The
// daemon judges every site every interval, so this bounds its cost (about
// 3 us a site).
constexpr std::size_t kTrendPoints = 16;

std::string seconds_text(std::uint64_t ns) {
    const std::uint64_t s = ns / 1'000'000'000;
    if (s >= 3600 && s % 3600 == 0) return std::to_string(s / 3600) + "h";
    if (s >= 60 && s % 60 == 0) return std::to_string(s / 60) + "m";
    return std::to_string(s) + "s";
}

std::string number_text(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, std::fabs(v) >= 100 ? "%.0f" : "%.1f", v);
    return buf;
}

// The biggest rise between two samples (with the rises just before and
// after it: a burst can straddle a sample), when it stayed (the count never
// fell back below its middle after it) and no other rise between two samples
// was half its size, and the trend's rise over the window with it taken out.
// A burst held (a BPF map, a plateau filled at once) is such a step with no
// climb beside it; a transient spike is no step, and bursts one after
// another are a climb (the trend would not see a second one that fewer than
// half the sample pairs straddle).
struct HeldStep {
    std::uint64_t size = 0;
    double rise_without = 0;
};
std::optional<HeldStep> held_step(std::span<const HistoryPoint> window, std::vector<TrendPoint> counts) {
    const auto rose = [&](std::size_t i) { return window[i].outstanding > window[i - 1].outstanding; };
    std::size_t at = 0;
    std::uint64_t biggest = 0;
    for (std::size_t i = 1; i < window.size(); ++i)
        if (window[i].outstanding > window[i - 1].outstanding + biggest) {
            biggest = window[i].outstanding - window[i - 1].outstanding;
            at = i;
        }
    if (biggest == 0) return std::nullopt;
    const std::size_t first = at > 1 && rose(at - 1) ? at - 1 : at;                // the step's first interval
    const std::size_t last = at + 1 < window.size() && rose(at + 1) ? at + 1 : at;  // and its last
    const std::uint64_t base = window[first - 1].outstanding;
    const std::uint64_t size = window[last].outstanding - base;
    for (std::size_t i = 1; i < window.size(); ++i)
        if ((i < first || i > last) && window[i].outstanding >= window[i - 1].outstanding + (size + 1) / 2)
            return std::nullopt;
    for (std::size_t i = last; i < window.size(); ++i)
        if (window[i].outstanding < base + size / 2) return std::nullopt;
    for (std::size_t i = first; i < last; ++i) counts[i].y = static_cast<double>(base);
    for (std::size_t i = last; i < counts.size(); ++i) counts[i].y -= static_cast<double>(size);
    return HeldStep{size, theil_sen_slope(counts, kTrendPoints) * (counts.back().t_s - counts.front().t_s)};
}

}  // namespace

std::string_view verdict_name(Verdict verdict) { return kNames[static_cast<std::size_t>(verdict)]; }

std::optional<Verdict> verdict_from_name(std::string_view name) {
    for (std::size_t i = 0; i < kNames.size(); ++i)
        if (kNames[i] == name) return static_cast<Verdict>(i);
    return std::nullopt;
}

SiteJudgement judge_site(std::span<const HistoryPoint> history, const SiteStats& stats, const VerdictRules& rules,
                         const UntrackedShare* cache_share, const TurnoverShare& turnover) {
    SiteJudgement j;
    // The window: the newest samples spanning at most window_ns.
    std::size_t first = history.size();
    while (first > 0 && history.back().t_ns - history[first - 1].t_ns <= rules.window_ns) --first;
    const std::span<const HistoryPoint> window = history.subspan(first);
    if (!window.empty()) {
        j.history_ns = window.back().t_ns - window.front().t_ns;
        j.window_start_ns = window.front().t_ns;
        j.window_rise = static_cast<std::int64_t>(window.back().outstanding) -
                        static_cast<std::int64_t>(window.front().outstanding);
    }

    std::vector<TrendPoint> counts, bytes;
    counts.reserve(window.size());
    bytes.reserve(window.size());
    for (const HistoryPoint& p : window) {
        const double t = static_cast<double>(p.t_ns - window.front().t_ns) / kNsPerS;
        counts.push_back({t, static_cast<double>(p.outstanding)});
        bytes.push_back({t, static_cast<double>(p.bytes)});
    }
    const bool flat = std::all_of(window.begin(), window.end(), [&](const HistoryPoint& p) {
        return p.outstanding == window.front().outstanding && p.bytes == window.front().bytes;
    });
    if (!flat) {  // most sites, most of the time: skip the pairs
        j.growth_per_hour = theil_sen_slope(counts, kTrendPoints) * kSecondsPerHour;
        // Bytes follow the count at the site's mean size; only a growing
        // site, whose bytes rank it, pays for a trend of its own (below).
        const HistoryPoint& last = window.back();
        if (last.outstanding > 0)
            j.growth_bytes_per_hour =
                j.growth_per_hour * static_cast<double>(last.bytes) / static_cast<double>(last.outstanding);
    }

    const std::uint64_t replaced_floor = std::max<std::uint64_t>(
        rules.untracked_min_replaced,
        static_cast<std::uint64_t>(std::ceil(rules.untracked_min_share * static_cast<double>(stats.allocs))));
    if (stats.replaced >= replaced_floor) {
        j.verdict = Verdict::untracked_frees;
        j.reason = std::to_string(stats.replaced) + " of its " + std::to_string(stats.allocs) +
                   " allocations had their address allocated again with no free seen: its frees escape the "
                   "tracepoints, so its outstanding count overstates what it holds";
        return j;
    }
    if (cache_share && cache_share->estimate > 0) {
        j.verdict = Verdict::untracked_frees;
        j.untracked_estimate = cache_share->estimate;
        j.reason = "its cache " + cache_share->cache + " has " + std::to_string(cache_share->kernel_active) +
                   " active objects in /proc/slabinfo, but kleakd counts " + std::to_string(cache_share->cache_live) +
                   " live: frees escape the tracepoints, about " + std::to_string(cache_share->estimate) + " of its " +
                   std::to_string(stats.outstanding) + " outstanding";
        return j;
    }
    // Samples come on a timer: allow a history 5 % short of the minimum
    // (six 10 s intervals measure 59.99 s as often as 60.01 s).
    if (window.empty() || j.history_ns + rules.min_history_ns / 20 < rules.min_history_ns) {
        j.verdict = Verdict::young;
        j.reason = "only " + seconds_text(j.history_ns) + " of history; judged after " +
                   seconds_text(rules.min_history_ns);
        return j;
    }

    const double window_hours = static_cast<double>(j.history_ns) / kNsPerS / kSecondsPerHour;
    const double rise = j.growth_per_hour * window_hours;
    // A new high within `recent`: the newest peak is above everything older.
    std::uint64_t older_peak = 0, recent_peak = 0;
    for (const HistoryPoint& p : window) {
        if (window.back().t_ns - p.t_ns < rules.recent_ns)
            recent_peak = std::max(recent_peak, p.outstanding);
        else
            older_peak = std::max(older_peak, p.outstanding);
    }
    const std::string trend = "trend " + std::string(j.growth_per_hour >= 0 ? "+" : "") +
                              number_text(j.growth_per_hour) + "/h over " + seconds_text(j.history_ns);
    if (rise < rules.min_rise) {
        j.verdict = Verdict::steady;
        j.reason = (flat ? "flat: " : "bounded: ") + trend;
        return j;
    }
    const double rising = rising_share(counts, kTrendPoints);
    j.rising_share = rising;
    if (rising < rules.min_rising_fraction) {
        j.verdict = Verdict::steady;
        j.reason = "noise around a level: " + trend + ", but only " + number_text(100 * rising) +
                   "% of its changes rise";
        return j;
    }
    if (const auto step = held_step(window, counts); step && step->rise_without < rules.min_rise) {
        j.verdict = Verdict::steady;
        j.reason = "a step, not a climb: " + std::to_string(step->size) + " of its rise of " +
                   std::to_string(j.window_rise) + " came between two samples and stayed, and without it " +
                   "it rose by " + number_text(step->rise_without) + " (" + trend + ")";
        return j;
    }
    if (recent_peak <= older_peak) {
        j.verdict = Verdict::steady;
        j.reason = "stopped growing: no new high in the last " + seconds_text(rules.recent_ns) + " (" + trend + ")";
        return j;
    }
    j.growth_bytes_per_hour = theil_sen_slope(bytes, kTrendPoints) * kSecondsPerHour;
    if (stats.reclaimable) {
        j.verdict = Verdict::reclaimable;
        j.reason = "growing, but in reclaimable memory (a cache the kernel shrinks under memory pressure: dentries, "
                   "inodes, buffer heads): " +
                   trend;
        return j;
    }
    // Old objects freed while new ones took their places: kleakd's view
    // filling up, not the kernel holding more (site_verdicts.cpp decides).
    if (turnover.cache_unseen_frees > 0) {
        j.verdict = Verdict::steady;
        j.reason = "filling up, not leaking: " + trend + ", but " +
                   (stats.family == Family::slab ? std::string("its cache")
                                                 : "the " + std::string(family_name(stats.family)) + " family") +
                   " freed " +
                   std::to_string(turnover.cache_unseen_frees) +
                   " objects allocated before kleakd saw them in that time (this site's share: " +
                   number_text(turnover.share) + "): new objects took the places of old ones kleakd cannot count";
        return j;
    }
    j.verdict = Verdict::growing;
    j.reason = "growing: " + trend + ", " + number_text(100 * rising) + "% of its changes rise, new high within " +
               seconds_text(rules.recent_ns);
    return j;
}

}  // namespace kleak::core
