// A verdict per call site, from its history (site_history.h) and its
// counts: is it leaking? README "Verdicts" explains them to users.
//
//   growing          outstanding rises over the window, steadily (most pairs
//                    of samples that differ rise, the Theil-Sen trend is at
//                    least min_rise over the window, and still is without
//                    its biggest held step), and reached a new high within
//                    `recent`: the leak signature.
//   steady           bounded: flat, or noise around a level (a cache, churn
//                    at a constant population), or a plateau it stopped
//                    climbing to (a one-time leak or a filled cache), a step
//                    (a rise between two samples that stayed, with no climb
//                    beside it: a burst held), or
//                    filling up: a rise its cache's frees of objects kleakd
//                    never saw allocated account for (cache_turnover.h).
//   reclaimable      would be growing, but it allocates reclaimable memory (a
//                    SLAB_RECLAIM_ACCOUNT cache: dentries, inodes, buffer
//                    heads, or __GFP_RECLAIMABLE): a cache the kernel shrinks
//                    under memory pressure, filling as the host works.
//   untracked-frees  its allocations' addresses come back allocated again
//                    with no free seen, or its slab cache has fewer active
//                    objects in /proc/slabinfo than kleakd counts live
//                    (cache_reconciliation.h): frees the tracepoints do not
//                    show (the maple tree's bulk and RCU paths). Its
//                    outstanding count overstates what it holds; never a leak.
//   young            not judged yet: less history than min_history, or a
//                    rise in kleakd's first window not steady enough to tell
//                    from a cache filling up (site_verdicts.cpp).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "cache_reconciliation.h"
#include "site_history.h"
#include "tracker.h"

namespace kleak::core {

enum class Verdict { young, steady, growing, untracked_frees, reclaimable };
// "young", "steady", "growing", "untracked-frees", "reclaimable"
std::string_view verdict_name(Verdict verdict);
std::optional<Verdict> verdict_from_name(std::string_view name);

// The thresholds; the daemon's are in its config (`verdicts`).
struct VerdictRules {
    std::uint64_t window_ns = 15ull * 60 * 1'000'000'000;  // the trend's span (at most tier 0's)
    std::uint64_t recent_ns = 60ull * 1'000'000'000;       // a growing site made a new high this recently
    std::uint64_t min_history_ns = 60ull * 1'000'000'000;  // younger sites are `young`
    double min_rise = 4;                 // allocations the trend adds over the window, at least
    double min_rising_fraction = 0.8;    // of the sample pairs that differ, the share that rise
    // ... while the history began with kleakd's own start and is shorter
    // than the window: every cache is filling up from empty then, and only
    // a leak's steadiness sets it apart from a cache following the host's work.
    double min_rising_fraction_first_window = 0.9;
    double untracked_min_share = 0.01;   // replaced / allocs from which frees count as untracked
    std::uint64_t untracked_min_replaced = 8;
    bool operator==(const VerdictRules&) const = default;
};

struct SiteJudgement {
    Verdict verdict = Verdict::young;
    std::string reason;                // in words, for people
    double growth_per_hour = 0;        // Theil-Sen trend of outstanding over the window
    double growth_bytes_per_hour = 0;  // ... of outstanding bytes
    std::uint64_t history_ns = 0;      // span of the history judged
    std::uint64_t window_start_ns = 0; // its first sample
    std::int64_t window_rise = 0;      // outstanding at its newest sample minus at its first
    double rising_share = 0;           // of the trend's sample pairs that differ, those that rise
    // untracked-frees by its cache's excess: of its outstanding, how many are
    // estimated freed unseen (0 otherwise).
    std::uint64_t untracked_estimate = 0;
    bool operator==(const SiteJudgement&) const = default;
};

// A site in a cache whose frees of objects kleakd never saw allocated
// (cache_turnover.h) account for the rise of all its sites over the window:
// those frees, and this site's share of them by its rise. Given only then.
struct TurnoverShare {
    double share = 0;
    std::uint64_t cache_unseen_frees = 0;
};

// Judges a site from its tier-0 history (oldest first), its counts, when its
// cache holds fewer objects in the kernel than kleakd counts its share, and
// its share of its cache's turnover.
SiteJudgement judge_site(std::span<const HistoryPoint> history, const SiteStats& stats, const VerdictRules& rules,
                         const UntrackedShare* cache_share = nullptr, const TurnoverShare& turnover = {});

}  // namespace kleak::core
