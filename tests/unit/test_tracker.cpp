// Tracker: outstanding allocations and per-call-site aggregates.
#include <gtest/gtest.h>

#include "core/tracker.h"
#include "test_helpers.h"

namespace kleak::core {
namespace {

using test::alloc_event;
using test::free_event;
using test::site_of;

constexpr std::uint64_t kP1 = 0xffff888000010000;
constexpr std::uint64_t kP2 = 0xffff888000020000;
constexpr std::uint64_t kP3 = 0xffff888000030000;
constexpr std::uint64_t kNeverAllocated = 0xffff8880dead0000;

constexpr std::uint64_t kAllocA = 0xffffffff81a00010;
constexpr std::uint64_t kAllocB = 0xffffffff81b00020;
constexpr std::uint64_t kFreeF = 0xffffffff81f00030;
constexpr std::uint64_t kFreeG = 0xffffffff81f00400;

TEST(Tracker, MatchedFreeRetiresTheAllocation) {
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 1, .ptr = kP1, .site = kAllocA, .req = 50, .alloc = 64}));
    ASSERT_EQ(tracker.outstanding_count(), 1u);
    tracker.apply(free_event({.ts = 2, .ptr = kP1, .site = kFreeF}));
    EXPECT_EQ(tracker.outstanding_count(), 0u);

    core::Totals expected;
    expected.allocs = 1;
    expected.frees = 1;
    expected.bytes_alloc = 64;
    expected.bytes_req = 50;
    expected.bytes_freed = 64;
    EXPECT_EQ(test::totals_fields(tracker.totals()), test::totals_fields(expected));
}

TEST(Tracker, UnmatchedFreesAreCountedPerFreeingSite) {
    Tracker tracker;
    tracker.apply(free_event({.ts = 1, .ptr = kNeverAllocated, .site = kFreeF}));
    tracker.apply(free_event({.ts = 2, .ptr = kNeverAllocated + 8, .site = kFreeF, .kind = EventKind::cache_free}));
    tracker.apply(free_event({.ts = 3, .ptr = kNeverAllocated + 16, .site = kFreeG}));
    // A double free: the second one matches nothing.
    tracker.apply(alloc_event({.ts = 4, .ptr = kP1, .site = kAllocA, .req = 8, .alloc = 8}));
    tracker.apply(free_event({.ts = 5, .ptr = kP1, .site = kFreeG}));
    tracker.apply(free_event({.ts = 6, .ptr = kP1, .site = kFreeG}));

    EXPECT_EQ(site_of(tracker, kFreeF).unmatched_frees, 2u);
    EXPECT_EQ(site_of(tracker, kFreeF).free_calls, 0u);
    EXPECT_EQ(site_of(tracker, kFreeG).unmatched_frees, 2u);
    EXPECT_EQ(site_of(tracker, kFreeG).free_calls, 1u);
    EXPECT_EQ(site_of(tracker, kAllocA).unmatched_frees, 0u);
    EXPECT_EQ(tracker.totals().unmatched_frees, 4u);
    EXPECT_EQ(tracker.totals().frees, 1u);
    EXPECT_EQ(tracker.totals().outstanding, 0u);
}

TEST(Tracker, ReplacedAllocationIsCountedOnTheOldSite) {
    // P1's free was lost: allocating P1 again retires the old entry.
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 1, .ptr = kP1, .site = kAllocA, .req = 60, .alloc = 64}));
    tracker.apply(alloc_event({.ts = 2, .ptr = kP2, .site = kAllocA, .req = 30, .alloc = 32}));
    tracker.apply(alloc_event({.ts = 3, .ptr = kP1, .site = kAllocB, .req = 100, .alloc = 128}));

    const SiteStats& a = site_of(tracker, kAllocA);
    EXPECT_EQ(a.allocs, 2u);
    EXPECT_EQ(a.replaced, 1u);
    EXPECT_EQ(a.replaced_bytes, 64u);
    EXPECT_EQ(a.outstanding, 1u);
    EXPECT_EQ(a.outstanding_bytes, 32u);
    EXPECT_EQ(a.frees, 0u);

    const SiteStats& b = site_of(tracker, kAllocB);
    EXPECT_EQ(b.allocs, 1u);
    EXPECT_EQ(b.replaced, 0u);
    EXPECT_EQ(b.outstanding, 1u);
    EXPECT_EQ(b.outstanding_bytes, 128u);

    EXPECT_EQ(tracker.totals().replaced, 1u);
    EXPECT_EQ(tracker.totals().allocs, 3u);
    EXPECT_EQ(tracker.totals().outstanding, 2u);
    EXPECT_EQ(tracker.totals().outstanding_bytes, 160u);
    EXPECT_EQ(tracker.totals().unmatched_frees, 0u);
    EXPECT_EQ(tracker.outstanding_count(), 2u);

    // The live entry is the new allocation.
    const auto live = test::outstanding_by_ptr(tracker);
    EXPECT_EQ(live.at(kP1), std::make_tuple(std::uint64_t{3}, kAllocB, std::uint32_t{128}));

    // Freeing P1 now credits the new site only.
    tracker.apply(free_event({.ts = 4, .ptr = kP1, .site = kFreeF}));
    EXPECT_EQ(site_of(tracker, kAllocB).frees, 1u);
    EXPECT_EQ(site_of(tracker, kAllocB).bytes_freed, 128u);
    EXPECT_EQ(site_of(tracker, kAllocA).frees, 0u);
    EXPECT_EQ(site_of(tracker, kAllocA).bytes_freed, 0u);
}

TEST(Tracker, ReplacedAtTheSameSite) {
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 1, .ptr = kP1, .site = kAllocA, .req = 10, .alloc = 16}));
    tracker.apply(alloc_event({.ts = 2, .ptr = kP1, .site = kAllocA, .req = 20, .alloc = 32}));

    const SiteStats& a = site_of(tracker, kAllocA);
    EXPECT_EQ(a.allocs, 2u);
    EXPECT_EQ(a.replaced, 1u);
    EXPECT_EQ(a.replaced_bytes, 16u);
    EXPECT_EQ(a.outstanding, 1u);
    EXPECT_EQ(a.outstanding_bytes, 32u);
    EXPECT_EQ(tracker.totals().outstanding, 1u);
    EXPECT_EQ(tracker.totals().outstanding_bytes, 32u);
}

TEST(Tracker, SlackIsAllocatedMinusRequestedInTotalsAndSites) {
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 1, .ptr = kP1, .site = kAllocA, .req = 100, .alloc = 128}));
    tracker.apply(alloc_event({.ts = 2, .ptr = kP2, .site = kAllocA, .req = 513, .alloc = 1024}));
    tracker.apply(alloc_event({.ts = 3, .ptr = kP3, .site = kAllocB, .req = 64, .alloc = 64}));

    const SiteStats& a = site_of(tracker, kAllocA);
    EXPECT_EQ(a.bytes_req, 613u);
    EXPECT_EQ(a.bytes_alloc, 1152u);
    EXPECT_EQ(a.bytes_alloc - a.bytes_req, 539u);
    const SiteStats& b = site_of(tracker, kAllocB);
    EXPECT_EQ(b.bytes_alloc - b.bytes_req, 0u);
    EXPECT_EQ(tracker.totals().bytes_req, 677u);
    EXPECT_EQ(tracker.totals().bytes_alloc, 1216u);
    // Outstanding bytes count what the allocator handed out, slack included.
    EXPECT_EQ(tracker.totals().outstanding_bytes, 1216u);
}

TEST(Tracker, KmallocAndCacheMemoryMatchByPointerWhicheverFreeRuns) {
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 1, .ptr = kP1, .site = kAllocA, .req = 40, .alloc = 64, .kind = EventKind::kmalloc}));
    tracker.apply(alloc_event({.ts = 2, .ptr = kP2, .site = kAllocB, .req = 96, .alloc = 96, .kind = EventKind::cache_alloc}));
    tracker.apply(free_event({.ts = 3, .ptr = kP1, .site = kFreeF, .kind = EventKind::cache_free}));
    tracker.apply(free_event({.ts = 4, .ptr = kP2, .site = kFreeG, .kind = EventKind::kfree}));

    EXPECT_EQ(tracker.totals().frees, 2u);
    EXPECT_EQ(tracker.totals().unmatched_frees, 0u);
    EXPECT_EQ(tracker.totals().outstanding, 0u);
    EXPECT_EQ(tracker.totals().bytes_freed, 160u);
    EXPECT_EQ(site_of(tracker, kAllocA).frees, 1u);
    EXPECT_EQ(site_of(tracker, kAllocB).frees, 1u);
    EXPECT_EQ(site_of(tracker, kFreeF).kind, EventKind::cache_free);
    EXPECT_EQ(site_of(tracker, kAllocB).kind, EventKind::cache_alloc);
}

TEST(Tracker, BytesFreedGoToTheAllocatingSiteFreeCallsToTheFreeingSite) {
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 1, .ptr = kP1, .site = kAllocA, .req = 200, .alloc = 256}));
    tracker.apply(alloc_event({.ts = 2, .ptr = kP2, .site = kAllocA, .req = 20, .alloc = 32}));
    tracker.apply(free_event({.ts = 3, .ptr = kP1, .site = kFreeF}));
    tracker.apply(free_event({.ts = 4, .ptr = kP2, .site = kFreeF}));

    const SiteStats& a = site_of(tracker, kAllocA);
    EXPECT_EQ(a.frees, 2u);
    EXPECT_EQ(a.bytes_freed, 288u);
    EXPECT_EQ(a.free_calls, 0u);
    EXPECT_EQ(a.outstanding, 0u);
    EXPECT_EQ(a.outstanding_bytes, 0u);

    const SiteStats& f = site_of(tracker, kFreeF);
    EXPECT_EQ(f.free_calls, 2u);
    EXPECT_EQ(f.frees, 0u);
    EXPECT_EQ(f.bytes_freed, 0u);
    EXPECT_EQ(f.allocs, 0u);
    EXPECT_EQ(f.kind, EventKind::kfree);
}

TEST(Tracker, SitesAreInternedByCallSiteKeepingTheFirstKind) {
    Tracker tracker;
    tracker.apply(free_event({.ts = 1, .ptr = kNeverAllocated, .site = kAllocA}));
    tracker.apply(alloc_event({.ts = 2, .ptr = kP1, .site = kAllocA, .req = 8, .alloc = 8}));
    tracker.apply(alloc_event({.ts = 3, .ptr = kP2, .site = kAllocB, .req = 8, .alloc = 8}));
    tracker.apply(alloc_event({.ts = 4, .ptr = kP3, .site = kAllocA, .req = 8, .alloc = 8}));

    ASSERT_EQ(tracker.sites().size(), 2u);
    EXPECT_EQ(tracker.sites()[0].call_site, kAllocA);
    EXPECT_EQ(tracker.sites()[0].kind, EventKind::kfree);
    EXPECT_EQ(tracker.sites()[0].allocs, 2u);
    EXPECT_EQ(tracker.sites()[0].unmatched_frees, 1u);
    EXPECT_EQ(tracker.sites()[1].call_site, kAllocB);
}

TEST(Tracker, TotalsEqualTheSumOverSites) {
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 1, .ptr = kP1, .site = kAllocA, .req = 100, .alloc = 128}));
    tracker.apply(alloc_event({.ts = 2, .ptr = kP2, .site = kAllocB, .req = 20, .alloc = 32, .kind = EventKind::cache_alloc}));
    tracker.apply(alloc_event({.ts = 3, .ptr = kP3, .site = kAllocB, .req = 7, .alloc = 8}));
    tracker.apply(free_event({.ts = 4, .ptr = kP1, .site = kFreeF}));
    tracker.apply(free_event({.ts = 5, .ptr = kNeverAllocated, .site = kFreeG}));
    tracker.apply(alloc_event({.ts = 6, .ptr = kP2, .site = kAllocA, .req = 1, .alloc = 8}));  // replaces
    tracker.apply(free_event({.ts = 7, .ptr = kP3, .site = kFreeG, .kind = EventKind::cache_free}));
    tracker.apply(alloc_event({.ts = 8, .ptr = kP1, .site = kAllocB, .req = 50, .alloc = 64}));

    core::Totals expected;
    expected.allocs = 5;
    expected.frees = 2;
    expected.bytes_alloc = 240;
    expected.bytes_req = 178;
    expected.bytes_freed = 136;
    expected.unmatched_frees = 1;
    expected.replaced = 1;
    expected.outstanding = 2;
    expected.outstanding_bytes = 72;
    EXPECT_EQ(test::totals_fields(tracker.totals()), test::totals_fields(expected));
    EXPECT_EQ(test::totals_fields(test::sum_over_sites(tracker.sites())), test::totals_fields(tracker.totals()));
    EXPECT_EQ(tracker.outstanding_count(), tracker.totals().outstanding);

    std::uint64_t free_calls = 0;
    for (const SiteStats& s : tracker.sites()) free_calls += s.free_calls;
    EXPECT_EQ(free_calls, tracker.totals().frees);
}

TEST(Tracker, ForEachOutstandingVisitsEveryLiveAllocation) {
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 10, .ptr = kP1, .site = kAllocA, .req = 1, .alloc = 8}));
    tracker.apply(alloc_event({.ts = 20, .ptr = kP2, .site = kAllocB, .req = 9, .alloc = 16}));
    tracker.apply(alloc_event({.ts = 30, .ptr = kP3, .site = kAllocA, .req = 17, .alloc = 32}));
    tracker.apply(free_event({.ts = 40, .ptr = kP2, .site = kFreeF}));

    using Live = std::map<std::uint64_t, std::tuple<std::uint64_t, std::uint64_t, std::uint32_t>>;
    EXPECT_EQ(test::outstanding_by_ptr(tracker),
              (Live{{kP1, {10, kAllocA, 8}}, {kP3, {30, kAllocA, 32}}}));
}

TEST(Tracker, ResetStartsAFreshBaseline) {
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 1, .ptr = kP1, .site = kAllocA, .req = 10, .alloc = 16}));
    tracker.apply(free_event({.ts = 2, .ptr = kNeverAllocated, .site = kFreeF}));
    tracker.reset();

    EXPECT_TRUE(tracker.sites().empty());
    EXPECT_EQ(tracker.outstanding_count(), 0u);
    EXPECT_EQ(test::totals_fields(tracker.totals()), test::totals_fields(core::Totals{}));

    // P1 was allocated before the baseline: its free is now unmatched.
    tracker.apply(free_event({.ts = 3, .ptr = kP1, .site = kFreeF}));
    EXPECT_EQ(tracker.totals().unmatched_frees, 1u);
    EXPECT_EQ(tracker.totals().frees, 0u);
    ASSERT_EQ(tracker.sites().size(), 1u);
    EXPECT_EQ(tracker.sites()[0].call_site, kFreeF);
    EXPECT_EQ(tracker.sites()[0].unmatched_frees, 1u);
}

TEST(Tracker, MemoryBytesGrowsWithLiveAllocations) {
    Tracker tracker;
    const std::size_t empty = tracker.memory_bytes();
    for (std::uint64_t i = 0; i < 1000; ++i)
        tracker.apply(alloc_event({.ts = i, .ptr = kP1 + i * 64, .site = kAllocA, .req = 64, .alloc = 64}));
    EXPECT_GE(tracker.memory_bytes(), empty + 1000 * sizeof(std::uint64_t));
}

}  // namespace
}  // namespace kleak::core
