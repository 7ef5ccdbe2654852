// Sites filling up kleakd's view of a cache (cache_turnover.h, verdict.h):
// the tracker counts frees of objects it never saw allocated per cache,
// CacheTurnover keeps them over the window, and a rise those frees account
// for is judged steady, not growing, while a leak beside it still grows.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/cache_reconciliation.h"
#include "core/cache_turnover.h"
#include "core/site_verdicts.h"
#include "core/slab_caches.h"
#include "core/tracker.h"
#include "core/unseen_free_slots.h"
#include "core/verdict.h"
#include "test_helpers.h"

namespace kleak::core {
namespace {

using test::alloc_event;
using test::free_event;

constexpr std::uint64_t kSecond = 1'000'000'000;
constexpr std::uint64_t kPeriod = 10 * kSecond;
constexpr std::uint64_t kCacheA = 0xffff888100001000, kCacheB = 0xffff888100002000;

absl::flat_hash_map<std::uint64_t, std::uint64_t> counts(std::uint64_t a, std::uint64_t b = 0) {
    absl::flat_hash_map<std::uint64_t, std::uint64_t> m;
    if (a) m[kCacheA] = a;
    if (b) m[kCacheB] = b;
    return m;
}

// --- CacheTurnover -----------------------------------------------------------------------------

TEST(CacheTurnover, CountsTheFreesAfterTheSampleAtOrBeforeTheStart) {
    CacheTurnover t(600 * kSecond);
    t.sample(100 * kSecond, counts(5));
    t.sample(110 * kSecond, counts(9));
    t.sample(120 * kSecond, counts(9));  // unchanged: no point, same answers
    t.sample(130 * kSecond, counts(20, 3));
    EXPECT_EQ(t.since(kCacheA, 100 * kSecond), 15u);
    EXPECT_EQ(t.since(kCacheA, 105 * kSecond), 15u);  // the count at 105 s is the one sampled at 100 s
    EXPECT_EQ(t.since(kCacheA, 110 * kSecond), 11u);
    EXPECT_EQ(t.since(kCacheA, 130 * kSecond), 0u);
    EXPECT_EQ(t.since(kCacheA, 50 * kSecond), 20u);  // before its first: all of them
    EXPECT_EQ(t.since(kCacheB, 100 * kSecond), 3u);  // first met at 130 s
    EXPECT_EQ(t.since(0xffff888100009000, 100 * kSecond), 0u);
}

TEST(CacheTurnover, TimesAreKeptToTheMillisecondAsHistoriesAre) {
    CacheTurnover t(600 * kSecond);
    t.sample(100 * kSecond + 700'000, counts(5));  // 100.0007 s: kept as 100.000 s
    t.sample(110 * kSecond + 300'000, counts(8));
    // A history point of the first sample says 100.000 s: its count is the base.
    EXPECT_EQ(t.since(kCacheA, 100 * kSecond), 3u);
}

TEST(CacheTurnover, KeepsABaseAtTheHorizonAndForgetsOlderPoints) {
    CacheTurnover t(60 * kSecond);
    for (std::uint64_t k = 0; k <= 100; ++k) t.sample(k * kPeriod, counts(k + 1));
    // Newest at 1000 s: a start at the horizon (940 s) still has its base.
    EXPECT_EQ(t.since(kCacheA, 940 * kSecond), 6u);
    EXPECT_LT(t.memory_bytes(), 20 * 1024u);  // ~7 points, not 101
    // A start older than everything kept (no window reaches there): every
    // free counted since the tracker started.
    EXPECT_EQ(t.since(kCacheA, 0), 101u);
    t.clear();
    EXPECT_EQ(t.since(kCacheA, 940 * kSecond), 0u);
}

// --- the tracker's count ---------------------------------------------------------------------

TEST(TrackerUnseenFrees, OnlyFreesOfObjectsNeverSeenCountAndOnlyWithTheirCache) {
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 1, .ptr = 0x1000, .site = 0xffffffff81000010, .req = 64, .alloc = 64,
                               .kind = EventKind::cache_alloc, .cache = kCacheA}));
    tracker.apply(free_event({.ts = 2, .ptr = 0x1000, .site = 0xffffffff81000020, .kind = EventKind::cache_free,
                              .cache = kCacheA}));  // seen allocated: not counted
    tracker.apply(free_event({.ts = 3, .ptr = 0x2000, .site = 0xffffffff81000020, .kind = EventKind::cache_free,
                              .cache = kCacheA}));
    tracker.apply(free_event({.ts = 4, .ptr = 0x3000, .site = 0xffffffff81000020, .kind = EventKind::cache_free,
                              .cache = kCacheB}));
    tracker.apply(free_event({.ts = 5, .ptr = 0x4000, .site = 0xffffffff81000020, .kind = EventKind::cache_free,
                              .cache = kCacheB}));
    // No cache known (kfree): counted as unmatched, its cache still to learn.
    tracker.apply(free_event({.ts = 6, .ptr = 0x5000, .site = 0xffffffff81000030, .kind = EventKind::kfree}));
    EXPECT_EQ(tracker.totals().unmatched_frees, 4u);
    EXPECT_EQ(tracker.unseen_frees_by_cache(), counts(1, 2));
    tracker.reset();
    EXPECT_TRUE(tracker.unseen_frees_by_cache().empty());
}

// A kfree names no cache; the next allocation at its address does (a slab
// slot is only reused by its own cache).
TEST(TrackerUnseenFrees, AKfreesCacheIsTheOneOfTheNextAllocationAtItsAddress) {
    constexpr std::uint64_t kSite = 0xffffffff81000010, kFreeSite = 0xffffffff81000030;
    constexpr std::uint32_t kGfpKernel = 0xcc0;
    Tracker tracker;
    tracker.apply(free_event({.ts = 1, .ptr = 0x5000, .site = kFreeSite, .kind = EventKind::kfree}));
    tracker.apply(free_event({.ts = 2, .ptr = 0x6000, .site = kFreeSite, .kind = EventKind::kfree}));
    EXPECT_TRUE(tracker.unseen_frees_by_cache().empty());
    tracker.apply(alloc_event({.ts = 3, .ptr = 0x7000, .site = kSite, .req = 100, .alloc = 128, .gfp = kGfpKernel}));
    EXPECT_TRUE(tracker.unseen_frees_by_cache().empty());  // another address
    tracker.apply(alloc_event({.ts = 4, .ptr = 0x5000, .site = kSite, .req = 100, .alloc = 128, .gfp = kGfpKernel}));
    const std::uint64_t kmalloc_128 = kmalloc_cache_key(kGfpKernel, 128);
    EXPECT_EQ(tracker.unseen_frees_by_cache().at(kmalloc_128), 1u);
    // Taken once: freed seen and allocated again, nothing more is counted.
    tracker.apply(free_event({.ts = 5, .ptr = 0x5000, .site = kFreeSite, .kind = EventKind::kfree}));
    tracker.apply(alloc_event({.ts = 6, .ptr = 0x5000, .site = kSite, .req = 100, .alloc = 128, .gfp = kGfpKernel}));
    EXPECT_EQ(tracker.unseen_frees_by_cache().at(kmalloc_128), 1u);
    // A kmem_cache allocation names its cache too (kfree of a cache's object).
    tracker.apply(alloc_event({.ts = 7, .ptr = 0x6000, .site = kSite, .req = 64, .alloc = 64,
                               .kind = EventKind::cache_alloc, .cache = kCacheA}));
    EXPECT_EQ(tracker.unseen_frees_by_cache().at(kCacheA), 1u);
    EXPECT_EQ(tracker.totals().unmatched_frees, 2u);
}

TEST(UnseenFreeSlots, KeepsAtMostAGenerationsWorthAndCountsTheRest) {
    UnseenFreeSlots slots;
    for (std::uint64_t i = 0; i <= UnseenFreeSlots::kMaxPerGeneration; ++i) slots.freed(0x10000 + 64 * i, 1);
    EXPECT_EQ(slots.dropped(), 1u);
    EXPECT_TRUE(slots.take(0x10000));
    EXPECT_FALSE(slots.take(0x10000 + 64 * UnseenFreeSlots::kMaxPerGeneration));  // the one dropped
    // Addresses never freed are almost all turned away by the filter alone;
    // take() says no to every one of them either way.
    for (std::uint64_t i = 0; i < 1000; ++i) EXPECT_FALSE(slots.take(0x7000000000 + 64 * i));
    slots.clear();
    EXPECT_EQ(slots.dropped(), 0u);
}

TEST(UnseenFreeSlots, ForgetsASlotNotTakenWithinTwoGenerations) {
    constexpr std::uint64_t gen = UnseenFreeSlots::kGenerationNs;
    UnseenFreeSlots slots;
    slots.freed(0x1000, 1);
    slots.freed(0x2000, 1 + gen);  // a new generation: 0x1000 is in the older one
    EXPECT_TRUE(slots.take(0x1000));
    EXPECT_FALSE(slots.take(0x1000));
    slots.freed(0x3000, 1 + 2 * gen);
    EXPECT_TRUE(slots.take(0x2000));
    slots.freed(0x4000, 1 + 3 * gen);  // 0x3000's generation is now the older
    slots.freed(0x5000, 1 + 4 * gen);  // ... and now gone
    EXPECT_FALSE(slots.take(0x3000));
    EXPECT_TRUE(slots.take(0x4000));
    EXPECT_TRUE(slots.take(0x5000));
}

TEST(UnseenFreeSlots, ABoundedNumberPerGenerationTheRestCounted) {
    UnseenFreeSlots slots;
    for (std::uint64_t i = 0; i < UnseenFreeSlots::kMaxPerGeneration + 10; ++i) slots.freed(0x10000 + 64 * i, 5);
    EXPECT_EQ(slots.dropped(), 10u);
    EXPECT_TRUE(slots.take(0x10000));
    EXPECT_FALSE(slots.take(0x10000 + 64 * UnseenFreeSlots::kMaxPerGeneration));
    EXPECT_LT(slots.memory_bytes(), std::size_t{4} << 20);
    slots.clear();
    EXPECT_FALSE(slots.take(0x10040));
    EXPECT_EQ(slots.dropped(), 0u);
}

// --- the verdict ---------------------------------------------------------------------------------

// A tier-0 history: outstanding rising by `per_sample` every 10 s for `seconds`.
std::vector<HistoryPoint> climb(std::uint64_t seconds, std::uint64_t per_sample) {
    std::vector<HistoryPoint> points;
    for (std::uint64_t t = 0, n = 100; t <= seconds; t += 10, n += per_sample)
        points.push_back({1000 * kSecond + t * kSecond, n, n * 64});
    return points;
}

SiteStats many_allocs() {
    SiteStats s;
    s.allocs = 100000;
    return s;
}

TEST(Verdict, ARiseItsCacheTurnoverAccountsForIsFillingUpNotGrowing) {
    const auto h = climb(300, 2);  // +60 over 5 min
    const SiteJudgement alone = judge_site(h, many_allocs(), VerdictRules{});
    ASSERT_EQ(alone.verdict, Verdict::growing) << alone.reason;
    EXPECT_EQ(alone.window_start_ns, 1000 * kSecond);
    EXPECT_EQ(alone.window_rise, 60);
    const SiteJudgement filled = judge_site(h, many_allocs(), VerdictRules{}, nullptr, TurnoverShare{60, 60});
    EXPECT_EQ(filled.verdict, Verdict::steady);
    EXPECT_TRUE(filled.reason.starts_with("filling up, not leaking: trend +720/h over 5m, but its cache freed 60 "
                                          "objects allocated before kleakd saw them"))
        << filled.reason;
    EXPECT_NEAR(filled.growth_per_hour, 720, 1);
    // Flat or young sites are judged as before.
    EXPECT_EQ(judge_site(climb(40, 2), many_allocs(), VerdictRules{}, nullptr, TurnoverShare{60, 60}).verdict,
              Verdict::young);
}

// The daemon's loop in small. Cache A holds 500 objects made before
// tracing; every 10 s `fill` frees `replaced` of them and allocates as many
// new ones (a long-lived process remapping: the kernel's count is flat),
// and `leak`, when on, allocates `leaked` more in cache A (never freed).
// Cache B's site `other` leaks 3 a sample with no turnover at all.
constexpr std::uint64_t kFillSite = 0xffffffff81000100, kLeakSite = 0xffffffff81000200,
                        kOtherSite = 0xffffffff81000300, kFreeSite = 0xffffffff81000400;

struct Scenario {
    Tracker tracker;
    SiteVerdicts verdicts{kPeriod, VerdictRules{}};
    std::uint64_t next_ptr = 0xffff888200000000, unseen_ptr = 0xffff888300000000;

    void alloc(std::uint64_t site, std::uint64_t cache, std::uint64_t ts) {
        tracker.apply(alloc_event({.ts = ts, .ptr = next_ptr += 0x100, .site = site, .req = 200, .alloc = 256,
                                   .kind = EventKind::cache_alloc, .cache = cache}));
    }
    void run(int steps, int replaced, int leaked) {
        for (int k = 0; k < steps; ++k) {
            const std::uint64_t ts = 1000 * kSecond + static_cast<std::uint64_t>(k) * kPeriod;
            for (int i = 0; i < replaced; ++i) {
                tracker.apply(free_event({.ts = ts, .ptr = unseen_ptr += 0x100, .site = kFreeSite,
                                          .kind = EventKind::cache_free, .cache = kCacheA}));
                alloc(kFillSite, kCacheA, ts + 1);
            }
            for (int i = 0; i < leaked; ++i) alloc(kLeakSite, kCacheA, ts + 2);
            for (int i = 0; i < 3; ++i) alloc(kOtherSite, kCacheB, ts + 3);
            const std::vector<std::uint64_t> caches = site_cache_keys(tracker);
            verdicts.sample(tracker.sites(), ts + 5, {{}, caches, &tracker.unseen_frees_by_cache()});
        }
    }
    SiteJudgement judgement(std::uint64_t call_site) const {
        for (SiteId id = 0; id < tracker.sites().size(); ++id)
            if (tracker.sites()[id].call_site == call_site) return verdicts.judgement(id);
        ADD_FAILURE() << "no site " << std::hex << call_site;
        return {};
    }
};

TEST(SiteVerdictsTurnover, ASiteReplacingUnseenObjectsIsSteadyAndALeakBesideItStillGrows) {
    Scenario sc;
    sc.run(30, 2, 0);
    const SiteJudgement fill = sc.judgement(kFillSite);
    EXPECT_EQ(fill.verdict, Verdict::steady) << fill.reason;
    EXPECT_TRUE(fill.reason.starts_with("filling up, not leaking")) << fill.reason;
    EXPECT_EQ(sc.judgement(kOtherSite).verdict, Verdict::growing);  // cache B has no turnover
    EXPECT_EQ(sc.verdicts.growing(), 1u);

    // The same with a leak of 2 a sample in the same cache: the frees explain
    // half the cache's rise, and cannot say whose; both keep growing.
    Scenario mixed;
    mixed.run(30, 2, 2);
    EXPECT_EQ(mixed.judgement(kLeakSite).verdict, Verdict::growing) << mixed.judgement(kLeakSite).reason;
    EXPECT_EQ(mixed.judgement(kFillSite).verdict, Verdict::growing);

    // A leak of 1 a sample beside a replacement of 5: 1 in 6 of the cache's
    // rise is unexplained, above the tenth allowed for frees in flight.
    Scenario small;
    small.run(30, 5, 1);
    EXPECT_EQ(small.judgement(kLeakSite).verdict, Verdict::growing) << small.judgement(kLeakSite).reason;

    // Below a tenth it hides while the old objects last (README "Verdicts").
    Scenario hidden;
    hidden.run(30, 20, 1);
    EXPECT_EQ(hidden.judgement(kLeakSite).verdict, Verdict::steady);
}

TEST(SiteVerdictsTurnover, AFewUnseenFreesDoNotExplainARiseTwiceTheirSize) {
    // 10 in the window, 5 explained: growing (more than 2, and than a tenth,
    // unexplained).
    Scenario sc;
    for (int k = 0; k < 12; ++k) {
        const std::uint64_t ts = 1000 * kSecond + static_cast<std::uint64_t>(k) * kPeriod;
        if (k > 0) sc.alloc(kLeakSite, kCacheA, ts);
        if (k % 2 == 1)
            sc.tracker.apply(free_event({.ts = ts, .ptr = sc.unseen_ptr += 0x100, .site = kFreeSite,
                                         .kind = EventKind::cache_free, .cache = kCacheA}));
        const std::vector<std::uint64_t> caches = site_cache_keys(sc.tracker);
        sc.verdicts.sample(sc.tracker.sites(), ts + 5, {{}, caches, &sc.tracker.unseen_frees_by_cache()});
    }
    const SiteJudgement j = sc.judgement(kLeakSite);
    EXPECT_EQ(j.window_rise, 10);  // its first sample already held one
    EXPECT_EQ(j.verdict, Verdict::growing) << j.reason;
}

TEST(SiteVerdictsTurnover, ANeighbourFreeingItsObjectsDoesNotHideALeak) {
    // Cache A: kLeakSite leaks 20 a sample while kFillSite's 600 seen
    // objects are freed 20 a sample, so the cache's net rise is 0; one unseen
    // free a sample explains that net, not the leak's rise of 20 a sample.
    constexpr std::uint64_t kFallSite = 0xffffffff81000500;
    Scenario sc;
    std::vector<std::uint64_t> falling;
    for (int i = 0; i < 600; ++i) {
        sc.alloc(kFallSite, kCacheA, 999 * kSecond);
        falling.push_back(sc.next_ptr);
    }
    for (int k = 0; k < 12; ++k) {
        const std::uint64_t ts = 1000 * kSecond + static_cast<std::uint64_t>(k) * kPeriod;
        for (int i = 0; i < 20; ++i) {
            sc.alloc(kLeakSite, kCacheA, ts);
            sc.tracker.apply(free_event({.ts = ts + 1, .ptr = falling.back(), .site = kFreeSite,
                                         .kind = EventKind::cache_free, .cache = kCacheA}));
            falling.pop_back();
        }
        sc.tracker.apply(free_event({.ts = ts + 2, .ptr = sc.unseen_ptr += 0x100, .site = kFreeSite,
                                     .kind = EventKind::cache_free, .cache = kCacheA}));
        const std::vector<std::uint64_t> caches = site_cache_keys(sc.tracker);
        sc.verdicts.sample(sc.tracker.sites(), ts + 5, {{}, caches, &sc.tracker.unseen_frees_by_cache()});
    }
    const SiteJudgement j = sc.judgement(kLeakSite);
    EXPECT_EQ(j.verdict, Verdict::growing) << j.reason;
}

// vmalloc and percpu have no caches: each family is one for its unseen
// frees (a process's thread stack and percpu counters replaced).
TEST(SiteVerdictsTurnover, AVmallocSiteReplacingUnseenAreasIsFillingUpNotLeaking) {
    Tracker tracker;
    SiteVerdicts verdicts{kPeriod, VerdictRules{}};
    std::uint64_t ptr = 0xffffc90000000000, unseen = 0xffffc90100000000;
    for (int k = 0; k < 12; ++k) {
        const std::uint64_t ts = 1000 * kSecond + static_cast<std::uint64_t>(k) * kPeriod;
        for (int i = 0; i < 2; ++i) {
            tracker.apply(free_event({.ts = ts, .ptr = unseen += 0x5000, .site = 0, .kind = EventKind::vmalloc_free}));
            tracker.apply(alloc_event({.ts = ts + 1, .ptr = ptr += 0x5000, .site = kFillSite, .req = 16384,
                                       .alloc = 20480, .kind = EventKind::vmalloc_alloc}));
        }
        verdicts.sample(tracker.sites(), ts + 5,
                        {{}, site_turnover_keys(tracker), &tracker.unseen_frees_by_cache()});
    }
    EXPECT_EQ(tracker.unseen_frees_by_cache().at(family_turnover_key(Family::vmalloc)), 24u);
    SiteId fill = 0;
    while (tracker.sites()[fill].call_site != kFillSite) ++fill;
    EXPECT_EQ(site_cache_keys(tracker)[fill], 0u);  // no cache to name
    const SiteJudgement j = verdicts.judgement(fill);
    EXPECT_EQ(j.verdict, Verdict::steady) << j.reason;
    EXPECT_NE(j.reason.find("the vmalloc family freed"), std::string::npos) << j.reason;
}

TEST(SiteVerdictsTurnover, WithoutTheTrackersCountsNothingChanges) {
    Scenario sc;
    for (int k = 0; k < 30; ++k) {
        const std::uint64_t ts = 1000 * kSecond + static_cast<std::uint64_t>(k) * kPeriod;
        for (int i = 0; i < 2; ++i) {
            sc.tracker.apply(free_event({.ts = ts, .ptr = sc.unseen_ptr += 0x100, .site = kFreeSite,
                                         .kind = EventKind::cache_free, .cache = kCacheA}));
            sc.alloc(kFillSite, kCacheA, ts + 1);
        }
        sc.verdicts.sample(sc.tracker.sites(), ts + 5);
    }
    EXPECT_EQ(sc.judgement(kFillSite).verdict, Verdict::growing);
}

TEST(SiteVerdictsTurnover, ClearForgetsTheTurnover) {
    Scenario sc;
    sc.run(30, 2, 0);
    sc.verdicts.clear();
    EXPECT_GT(sc.verdicts.memory_bytes(), 0u);
    sc.tracker.reset();
    // After a reset the old frees no longer count: a pure climb is growing.
    for (int k = 0; k < 30; ++k) {
        const std::uint64_t ts = 2000 * kSecond + static_cast<std::uint64_t>(k) * kPeriod;
        sc.alloc(kFillSite, kCacheA, ts);
        sc.alloc(kFillSite, kCacheA, ts);
        const std::vector<std::uint64_t> caches = site_cache_keys(sc.tracker);
        sc.verdicts.sample(sc.tracker.sites(), ts + 5, {{}, caches, &sc.tracker.unseen_frees_by_cache()});
    }
    EXPECT_EQ(sc.judgement(kFillSite).verdict, Verdict::growing);
}

}  // namespace
}  // namespace kleak::core
