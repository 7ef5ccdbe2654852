// Tracker: outstanding allocations and per-call-site aggregates.
#include <gtest/gtest.h>

#include <algorithm>
#include <iterator>
#include <limits>
#include <map>
#include <random>
#include <vector>

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
constexpr std::uint64_t kAllocC = 0xffffffff81c00040;
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

TEST(Tracker, ASiteIsReclaimableOnceAnAllocationThereIs) {
    Tracker tracker;
    Event plain = alloc_event({.ts = 1, .ptr = kP1, .site = kAllocA, .req = 50, .alloc = 64});
    plain.gfp_flags = 0xcc0;  // GFP_KERNEL
    tracker.apply(plain);
    EXPECT_FALSE(site_of(tracker, kAllocA).reclaimable);
    Event reclaimable = alloc_event({.ts = 2, .ptr = kP2, .site = kAllocA, .req = 50, .alloc = 64});
    reclaimable.gfp_flags = 0xcc0 | 0x10;  // from a SLAB_RECLAIM_ACCOUNT cache (kleak_abi.h)
    tracker.apply(reclaimable);
    EXPECT_TRUE(site_of(tracker, kAllocA).reclaimable);
    tracker.apply(plain);  // sticky
    EXPECT_TRUE(site_of(tracker, kAllocA).reclaimable);
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
    // P1's free was lost: allocating P1 again displaces the old entry (its
    // free might still come, stamped late), and once none can (here: the end
    // of input) it is counted replaced at its own site.
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 1, .ptr = kP1, .site = kAllocA, .req = 60, .alloc = 64}));
    tracker.apply(alloc_event({.ts = 2, .ptr = kP2, .site = kAllocA, .req = 30, .alloc = 32}));
    tracker.apply(alloc_event({.ts = 3, .ptr = kP1, .site = kAllocB, .req = 100, .alloc = 128}));
    EXPECT_EQ(tracker.displaced_count(), 1u);
    EXPECT_EQ(tracker.totals().replaced, 0u);
    EXPECT_EQ(tracker.totals().outstanding, 3u);
    EXPECT_EQ(tracker.outstanding_count(), 3u);

    tracker.settle();
    EXPECT_EQ(tracker.displaced_count(), 0u);

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

    // The live entry is the new allocation (birth rounded up to its 1.05 ms unit).
    const auto live = test::outstanding_by_ptr(tracker);
    EXPECT_EQ(live.at(kP1), std::make_tuple(std::uint64_t{1'048'575}, kAllocB, std::uint32_t{128}));

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
    tracker.settle();  // end of input: no late free can come for the first

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
    tracker.settle();  // end of input: P2's first allocation is replaced

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
    EXPECT_EQ(test::totals_fields(test::sum_over_sites(tracker)), test::totals_fields(tracker.totals()));
    EXPECT_EQ(tracker.outstanding_count(), tracker.totals().outstanding);

    std::uint64_t free_calls = 0;
    for (const SiteStats& s : tracker.sites()) free_calls += s.free_calls;
    EXPECT_EQ(free_calls, tracker.totals().frees);
}

TEST(Tracker, ForEachOutstandingVisitsEveryLiveAllocation) {
    constexpr std::uint64_t kUnit = std::uint64_t{1} << 20;  // ns
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 10, .ptr = kP1, .site = kAllocA, .req = 1, .alloc = 8}));
    tracker.apply(alloc_event({.ts = 20, .ptr = kP2, .site = kAllocB, .req = 9, .alloc = 16}));
    tracker.apply(alloc_event({.ts = 5 * kUnit + 30, .ptr = kP3, .site = kAllocA, .req = 17, .alloc = 32}));
    tracker.apply(free_event({.ts = 6 * kUnit, .ptr = kP2, .site = kFreeF}));

    // Birth times are reported as the last nanosecond of their 2^20 ns unit.
    using Live = std::map<std::uint64_t, std::tuple<std::uint64_t, std::uint64_t, std::uint32_t>>;
    EXPECT_EQ(test::outstanding_by_ptr(tracker),
              (Live{{kP1, {kUnit - 1, kAllocA, 8}}, {kP3, {6 * kUnit - 1, kAllocA, 32}}}));
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

TEST(Tracker, MemoryBytesIsSixteenBytesPerSlotAtOneMillion) {
    // Target 4 (<= 48 bytes per outstanding allocation): 1M entries sit in
    // 2^21 slots of 16 bytes; the class and site tables are small beside it.
    Tracker tracker;
    Event e = alloc_event({.site = kAllocA, .req = 64, .alloc = 64});
    for (std::uint64_t i = 0; i < 1'000'000; ++i) {
        e.ts_ns = i;
        e.ptr = kP1 + i * 64;
        e.call_site = kAllocA + (i % 512) * 64;
        tracker.apply(e);
    }
    EXPECT_GE(tracker.memory_bytes(), (std::size_t{16} << 21));
    EXPECT_LE(tracker.memory_bytes(), (std::size_t{16} << 21) + (std::size_t{1} << 20));
    EXPECT_LE(static_cast<double>(tracker.memory_bytes()) / 1e6, 48.0);
    EXPECT_EQ(tracker.class_count(), 512u);
}


// --- the packed table: classes, overflow, batches -----------------------------------

TEST(Tracker, InternsOneClassPerSiteAndSize) {
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 1, .ptr = kP1, .site = kAllocA, .req = 60, .alloc = 64}));
    tracker.apply(alloc_event({.ts = 2, .ptr = kP2, .site = kAllocA, .req = 50, .alloc = 64}));   // same class
    tracker.apply(alloc_event({.ts = 3, .ptr = kP3, .site = kAllocA, .req = 100, .alloc = 128})); // new size
    tracker.apply(alloc_event({.ts = 4, .ptr = kP3 + 64, .site = kAllocB, .req = 64, .alloc = 64}));  // new site
    tracker.apply(free_event({.ts = 5, .ptr = kP1, .site = kFreeF}));                              // no class
    EXPECT_EQ(tracker.class_count(), 3u);
    EXPECT_EQ(tracker.class_overflows(), 0u);

    using Live = std::map<std::uint64_t, std::tuple<std::uint64_t, std::uint64_t, std::uint32_t>>;
    EXPECT_EQ(test::outstanding_by_ptr(tracker), (Live{{kP2, {1'048'575, kAllocA, 64}},
                                                       {kP3, {1'048'575, kAllocA, 128}},
                                                       {kP3 + 64, {1'048'575, kAllocB, 64}}}));
}

TEST(Tracker, PointerZeroIsTrackedLikeAnyOther) {
    // The table marks empty slots with key 0, so pointer 0 lives apart: a
    // replayed stream may still hold it, and the semantics must not change.
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 1, .ptr = 0, .site = kAllocA, .req = 8, .alloc = 8}));
    tracker.apply(alloc_event({.ts = 2, .ptr = 0, .site = kAllocB, .req = 16, .alloc = 16}));
    EXPECT_EQ(tracker.outstanding_count(), 2u);  // the first is displaced, not yet replaced
    EXPECT_EQ(tracker.displaced_count(), 1u);
    tracker.settle();
    EXPECT_EQ(tracker.outstanding_count(), 1u);
    EXPECT_EQ(site_of(tracker, kAllocA).replaced, 1u);
    tracker.apply(free_event({.ts = 3, .ptr = 0, .site = kFreeF}));
    tracker.apply(free_event({.ts = 4, .ptr = 0, .site = kFreeF}));
    EXPECT_EQ(site_of(tracker, kAllocB).frees, 1u);
    EXPECT_EQ(site_of(tracker, kAllocB).bytes_freed, 16u);
    EXPECT_EQ(site_of(tracker, kFreeF).unmatched_frees, 1u);
    EXPECT_EQ(tracker.outstanding_count(), 0u);
}

TEST(Tracker, IgnoresPrintkEvents) {
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 1, .ptr = kP1, .site = kAllocA, .req = 8, .alloc = 8}));
    Event line = free_event({.ts = 2, .ptr = kP1, .site = 0});
    line.kind = EventKind::printk;
    tracker.apply(line);
    EXPECT_EQ(tracker.outstanding_count(), 1u);
    EXPECT_EQ(tracker.totals().frees, 0u);
    EXPECT_EQ(tracker.totals().unmatched_frees, 0u);
    EXPECT_EQ(tracker.sites().size(), 1u);
}

TEST(Tracker, ClassTableOverflowIsCountedAndStillExact) {
    // A table of 2 classes: the third (site, size) pair and later new ones
    // are kept in the side map, counted, and reported exactly.
    Tracker tracker(2);
    tracker.apply(alloc_event({.ts = 1, .ptr = kP1, .site = kAllocA, .req = 8, .alloc = 8}));
    tracker.apply(alloc_event({.ts = 2, .ptr = kP2, .site = kAllocA, .req = 16, .alloc = 16}));
    tracker.apply(alloc_event({.ts = 3, .ptr = kP3, .site = kAllocB, .req = 32, .alloc = 32}));  // overflows
    tracker.apply(alloc_event({.ts = 4, .ptr = kP3 + 64, .site = kAllocA, .req = 8, .alloc = 8}));  // class 0 again
    EXPECT_EQ(tracker.class_count(), 2u);
    EXPECT_EQ(tracker.class_overflows(), 1u);
    EXPECT_EQ(tracker.overflow_count(), 1u);
    EXPECT_EQ(test::outstanding_by_ptr(tracker).at(kP3), std::make_tuple(std::uint64_t{1'048'575}, kAllocB, std::uint32_t{32}));

    // An overflowed entry replaced by a classed one leaves the side map
    // (displaced, it keeps its own class)...
    tracker.apply(alloc_event({.ts = 5, .ptr = kP3, .site = kAllocA, .req = 8, .alloc = 8}));
    EXPECT_EQ(tracker.overflow_count(), 0u);
    tracker.settle();  // no late free is coming for it
    EXPECT_EQ(site_of(tracker, kAllocB).replaced, 1u);
    EXPECT_EQ(site_of(tracker, kAllocB).replaced_bytes, 32u);
    EXPECT_EQ(tracker.overflow_count(), 0u);
    // ... and a classed one replaced by an overflowing one enters it.
    tracker.apply(alloc_event({.ts = 6, .ptr = kP1, .site = kAllocB, .req = 64, .alloc = 64}));
    tracker.settle();
    EXPECT_EQ(tracker.class_overflows(), 2u);
    EXPECT_EQ(tracker.overflow_count(), 1u);
    EXPECT_EQ(site_of(tracker, kAllocA).replaced_bytes, 8u);
    // Its free credits the right site and size, and empties the side map.
    tracker.apply(free_event({.ts = 7, .ptr = kP1, .site = kFreeF}));
    EXPECT_EQ(site_of(tracker, kAllocB).frees, 1u);
    EXPECT_EQ(site_of(tracker, kAllocB).bytes_freed, 64u);
    EXPECT_EQ(tracker.overflow_count(), 0u);
    EXPECT_EQ(tracker.totals().outstanding, 3u);
    EXPECT_EQ(tracker.totals().outstanding_bytes, 32u);

    tracker.reset();
    EXPECT_EQ(tracker.class_overflows(), 0u);
    EXPECT_EQ(tracker.class_count(), 0u);
}

// --- displaced entries: frees stamped late (ABI 2) -----------------------------------

// Moves event time (with allocations of other pointers at kAllocB) to just
// before `expiry`, then to it: the one displaced entry, a 64-byte one from
// kAllocA, must wait until exactly then and be counted replaced at its site.
void expect_the_kAllocA_entry_expires_at(Tracker& tracker, std::uint64_t expiry) {
    tracker.apply(alloc_event({.ts = expiry - 1, .ptr = kP2, .site = kAllocB, .req = 8, .alloc = 8}));
    EXPECT_EQ(tracker.displaced_count(), 1u);
    EXPECT_EQ(tracker.totals().replaced, 0u);
    tracker.apply(alloc_event({.ts = expiry, .ptr = kP3, .site = kAllocB, .req = 8, .alloc = 8}));
    EXPECT_EQ(tracker.displaced_count(), 0u);
    EXPECT_EQ(tracker.totals().replaced, 1u);
    EXPECT_EQ(site_of(tracker, kAllocA).replaced, 1u);
    EXPECT_EQ(site_of(tracker, kAllocA).replaced_bytes, 64u);
    EXPECT_EQ(site_of(tracker, kAllocA).outstanding, 0u);
}

TEST(Tracker, ReorderedFreeIsMatchedToTheAllocationItFreed) {
    // CPU0 allocates P1 at 100; CPU2 frees it without reading the clock (its
    // previous reading: 50) and stamps the free at its next reading, 300;
    // meanwhile CPU1 gets P1 back at 200. Merged, the free sorts after the
    // reallocation, but its window (50..300) reaches back before it.
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 100, .cpu = 0, .ptr = kP1, .site = kAllocA, .req = 60, .alloc = 64}));
    tracker.apply(alloc_event({.ts = 200, .cpu = 1, .ptr = kP1, .site = kAllocB, .req = 100, .alloc = 128}));
    EXPECT_EQ(tracker.displaced_count(), 1u);
    tracker.apply(free_event({.ts = 300, .cpu = 2, .ptr = kP1, .site = kFreeF, .window = 250}));

    EXPECT_EQ(tracker.totals().frees, 1u);
    EXPECT_EQ(tracker.totals().reordered_frees, 1u);
    EXPECT_EQ(tracker.totals().replaced, 0u);
    EXPECT_EQ(tracker.totals().unmatched_frees, 0u);
    EXPECT_EQ(tracker.displaced_count(), 0u);
    // The first allocation is freed, credited like any free...
    EXPECT_EQ(site_of(tracker, kAllocA).frees, 1u);
    EXPECT_EQ(site_of(tracker, kAllocA).bytes_freed, 64u);
    EXPECT_EQ(site_of(tracker, kAllocA).outstanding, 0u);
    EXPECT_EQ(site_of(tracker, kFreeF).free_calls, 1u);
    // ... and the second stays outstanding.
    EXPECT_EQ(site_of(tracker, kAllocB).frees, 0u);
    EXPECT_EQ(tracker.totals().outstanding, 1u);
    EXPECT_EQ(tracker.totals().outstanding_bytes, 128u);
    EXPECT_EQ(test::outstanding_entries(tracker),
              (std::vector<test::OutstandingEntry>{{kP1, rounded_birth_ns(200), kAllocB, 128}}));
    EXPECT_EQ(test::totals_fields(test::sum_over_sites(tracker)), test::totals_fields(tracker.totals()));

    // The reallocation's own free, later, finds it.
    tracker.apply(free_event({.ts = 400, .ptr = kP1, .site = kFreeF}));
    EXPECT_EQ(site_of(tracker, kAllocB).frees, 1u);
    EXPECT_EQ(tracker.totals().reordered_frees, 1u);
    EXPECT_EQ(tracker.outstanding_count(), 0u);
    tracker.settle();
    EXPECT_EQ(tracker.totals().replaced, 0u);
}

TEST(Tracker, FreeThatCannotPrecedeTheReallocationFreesTheNewOneAndTheOldExpiresReplaced) {
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 100, .ptr = kP1, .site = kAllocA, .req = 60, .alloc = 64}));
    tracker.apply(alloc_event({.ts = 200, .ptr = kP1, .site = kAllocB, .req = 100, .alloc = 128}));
    // Its window starts exactly at the reallocation: it cannot have run before it.
    tracker.apply(free_event({.ts = 300, .ptr = kP1, .site = kFreeF, .window = 100}));
    EXPECT_EQ(site_of(tracker, kAllocB).frees, 1u);
    EXPECT_EQ(site_of(tracker, kAllocB).bytes_freed, 128u);
    EXPECT_EQ(site_of(tracker, kAllocA).frees, 0u);
    EXPECT_EQ(tracker.totals().reordered_frees, 0u);
    EXPECT_EQ(tracker.displaced_count(), 1u);
    EXPECT_EQ(tracker.totals().outstanding, 1u);
    EXPECT_EQ(tracker.totals().outstanding_bytes, 64u);

    // The displaced entry waits kDisplacedHorizonNs of event time from the
    // reallocation, whatever event moves time on, then counts replaced.
    const std::uint64_t expiry = 200 + Tracker::kDisplacedHorizonNs;
    expect_the_kAllocA_entry_expires_at(tracker, expiry);
    EXPECT_EQ(tracker.totals().outstanding, 2u);
    EXPECT_EQ(tracker.totals().outstanding_bytes, 16u);

    // A free that would have matched it comes too late: it matches nothing.
    tracker.apply(free_event({.ts = expiry + 1, .ptr = kP1, .site = kFreeF, .window = 1000}));
    EXPECT_EQ(tracker.totals().unmatched_frees, 1u);
    EXPECT_EQ(tracker.totals().reordered_frees, 0u);
}

TEST(Tracker, DisplacedEntriesAreListedAndCountedAsOutstanding) {
    constexpr std::uint64_t kUnit = std::uint64_t{1} << 20;  // ns
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 2 * kUnit + 5, .cpu = 0, .ptr = kP1, .site = kAllocA, .req = 60, .alloc = 64}));
    tracker.apply(alloc_event({.ts = 5 * kUnit, .cpu = 1, .ptr = kP1, .site = kAllocB, .req = 100, .alloc = 128}));

    // The same pointer twice: the displaced entry and the one that took its place.
    EXPECT_EQ(test::outstanding_entries(tracker),
              (std::vector<test::OutstandingEntry>{{kP1, 3 * kUnit - 1, kAllocA, 64}, {kP1, 6 * kUnit - 1, kAllocB, 128}}));
    EXPECT_EQ(tracker.outstanding_count(), 2u);
    EXPECT_EQ(tracker.totals().outstanding, 2u);
    EXPECT_EQ(tracker.totals().outstanding_bytes, 192u);
    EXPECT_EQ(site_of(tracker, kAllocA).outstanding, 1u);
    EXPECT_EQ(site_of(tracker, kAllocA).outstanding_bytes, 64u);

    // Site ids: A was interned first.
    ASSERT_EQ(tracker.sites()[0].call_site, kAllocA);
    auto ages = tracker.outstanding_born_by(3 * kUnit - 2);
    EXPECT_EQ(ages[0].count, 0u) << "born by its unit's last ns, not before";
    ages = tracker.outstanding_born_by(3 * kUnit - 1);
    EXPECT_EQ(ages[0].count, 1u);
    EXPECT_EQ(ages[0].bytes, 64u);
    EXPECT_EQ(ages[0].oldest_ts_ns, 3 * kUnit - 1);
    EXPECT_EQ(ages[1].count, 0u);
    ages = tracker.outstanding_born_by(~std::uint64_t{0});
    EXPECT_EQ(ages[0].count, 1u);
    EXPECT_EQ(ages[1].count, 1u);
    EXPECT_EQ(ages[1].oldest_ts_ns, 6 * kUnit - 1);
}

TEST(Tracker, SettleCountsEveryDisplacedEntryReplaced) {
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 1, .ptr = kP1, .site = kAllocA, .req = 60, .alloc = 64}));
    tracker.apply(alloc_event({.ts = 2, .ptr = kP2, .site = kAllocB, .req = 30, .alloc = 32}));
    tracker.apply(alloc_event({.ts = 3, .ptr = kP3, .site = kAllocA, .req = 8, .alloc = 8}));
    tracker.apply(alloc_event({.ts = 4, .ptr = kP1, .site = kAllocB, .req = 100, .alloc = 128}));
    tracker.apply(alloc_event({.ts = 5, .ptr = kP2, .site = kAllocB, .req = 200, .alloc = 256}));
    ASSERT_EQ(tracker.displaced_count(), 2u);

    tracker.settle();
    EXPECT_EQ(tracker.displaced_count(), 0u);
    EXPECT_EQ(tracker.totals().replaced, 2u);
    EXPECT_EQ(site_of(tracker, kAllocA).replaced, 1u);
    EXPECT_EQ(site_of(tracker, kAllocA).replaced_bytes, 64u);
    EXPECT_EQ(site_of(tracker, kAllocB).replaced, 1u);
    EXPECT_EQ(site_of(tracker, kAllocB).replaced_bytes, 32u);
    EXPECT_EQ(tracker.totals().outstanding, 3u);
    EXPECT_EQ(tracker.totals().outstanding_bytes, 8u + 128u + 256u);
    EXPECT_EQ(test::outstanding_entries(tracker),
              (std::vector<test::OutstandingEntry>{{kP1, rounded_birth_ns(4), kAllocB, 128},
                                                   {kP2, rounded_birth_ns(5), kAllocB, 256},
                                                   {kP3, rounded_birth_ns(3), kAllocA, 8}}));

    // Settling again changes nothing.
    const auto before = test::totals_fields(tracker.totals());
    tracker.settle();
    EXPECT_EQ(test::totals_fields(tracker.totals()), before);
    // After it a free of P1, even one whose window reaches back, is the live one's.
    tracker.apply(free_event({.ts = 6, .ptr = kP1, .site = kFreeF, .window = 6}));
    EXPECT_EQ(site_of(tracker, kAllocB).frees, 1u);
    EXPECT_EQ(site_of(tracker, kAllocB).bytes_freed, 128u);
    EXPECT_EQ(tracker.totals().reordered_frees, 0u);
}

TEST(Tracker, PointerDisplacedTwiceKeepsBothEntriesEachWaitingForItsOwnFree) {
    // Two reallocations before any free: both displaced entries stay
    // outstanding, for a late free each; neither is counted replaced yet.
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 100, .ptr = kP1, .site = kAllocA, .req = 60, .alloc = 64}));
    tracker.apply(alloc_event({.ts = 200, .ptr = kP1, .site = kAllocB, .req = 100, .alloc = 128}));
    tracker.apply(alloc_event({.ts = 300, .ptr = kP1, .site = kAllocB, .req = 20, .alloc = 32}));
    EXPECT_EQ(tracker.totals().replaced, 0u);
    EXPECT_EQ(site_of(tracker, kAllocA).replaced, 0u);
    EXPECT_EQ(tracker.displaced_count(), 2u) << "entries, not pointers";
    EXPECT_EQ(tracker.outstanding_count(), 3u);
    EXPECT_EQ(tracker.totals().outstanding, 3u);
    EXPECT_EQ(tracker.totals().outstanding_bytes, 224u);
    EXPECT_EQ(site_of(tracker, kAllocA).outstanding, 1u);
    EXPECT_EQ(site_of(tracker, kAllocB).outstanding, 2u);
    EXPECT_EQ(test::outstanding_entries(tracker),
              (std::vector<test::OutstandingEntry>{{kP1, rounded_birth_ns(100), kAllocA, 64},
                                                   {kP1, rounded_birth_ns(300), kAllocB, 32},
                                                   {kP1, rounded_birth_ns(200), kAllocB, 128}}));  // sorted

    // A free reaching back before 300 but not before 200 can only be the
    // second allocation's: it skips the first displaced entry.
    tracker.apply(free_event({.ts = 350, .ptr = kP1, .site = kFreeF, .window = 100}));
    EXPECT_EQ(tracker.totals().reordered_frees, 1u);
    EXPECT_EQ(site_of(tracker, kAllocB).frees, 1u);
    EXPECT_EQ(site_of(tracker, kAllocB).bytes_freed, 128u);
    EXPECT_EQ(site_of(tracker, kAllocA).frees, 0u);
    EXPECT_EQ(tracker.displaced_count(), 1u);
    EXPECT_EQ(test::outstanding_entries(tracker),
              (std::vector<test::OutstandingEntry>{{kP1, rounded_birth_ns(100), kAllocA, 64},
                                                   {kP1, rounded_birth_ns(300), kAllocB, 32}}));
    EXPECT_EQ(test::totals_fields(test::sum_over_sites(tracker)), test::totals_fields(tracker.totals()));

    // The first expires on its own, kDisplacedHorizonNs after its own
    // displacement (200), not after the pointer's latest one (300).
    const std::uint64_t expiry = 200 + Tracker::kDisplacedHorizonNs;
    expect_the_kAllocA_entry_expires_at(tracker, expiry);

    // Then a free reaching back to 0 finds no displaced entry: the live one's.
    tracker.apply(free_event({.ts = expiry + 1, .ptr = kP1, .site = kFreeF, .window = static_cast<std::uint32_t>(expiry + 1)}));
    EXPECT_EQ(tracker.totals().reordered_frees, 1u);
    EXPECT_EQ(site_of(tracker, kAllocB).frees, 2u);
    EXPECT_EQ(site_of(tracker, kAllocB).bytes_freed, 160u);
    EXPECT_EQ(tracker.totals().unmatched_frees, 0u);
    tracker.settle();
    EXPECT_EQ(tracker.totals().replaced, 1u);
    EXPECT_EQ(tracker.totals().outstanding, 2u);
    EXPECT_EQ(test::totals_fields(test::sum_over_sites(tracker)), test::totals_fields(tracker.totals()));
}

TEST(Tracker, AFreeThatMayPrecedeSeveralDisplacementsClaimsTheOldestEntry) {
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 100, .ptr = kP1, .site = kAllocA, .req = 60, .alloc = 64}));
    tracker.apply(alloc_event({.ts = 200, .ptr = kP1, .site = kAllocB, .req = 100, .alloc = 128}));
    tracker.apply(alloc_event({.ts = 300, .ptr = kP1, .site = kAllocC, .req = 20, .alloc = 32}));
    ASSERT_EQ(tracker.displaced_count(), 2u);

    // Both windows reach back before 200: oldest first.
    tracker.apply(free_event({.ts = 400, .ptr = kP1, .site = kFreeF, .window = 350}));
    EXPECT_EQ(site_of(tracker, kAllocA).frees, 1u);
    EXPECT_EQ(site_of(tracker, kAllocB).frees, 0u);
    EXPECT_EQ(tracker.displaced_count(), 1u);
    tracker.apply(free_event({.ts = 410, .ptr = kP1, .site = kFreeF, .window = 360}));
    EXPECT_EQ(site_of(tracker, kAllocB).frees, 1u);
    EXPECT_EQ(tracker.displaced_count(), 0u);
    EXPECT_EQ(tracker.totals().reordered_frees, 2u);
    // A third goes to the live entry, and a fourth matches nothing.
    tracker.apply(free_event({.ts = 420, .ptr = kP1, .site = kFreeF, .window = 370}));
    EXPECT_EQ(site_of(tracker, kAllocC).frees, 1u);
    EXPECT_EQ(tracker.totals().reordered_frees, 2u);
    tracker.apply(free_event({.ts = 430, .ptr = kP1, .site = kFreeF, .window = 380}));
    EXPECT_EQ(tracker.totals().unmatched_frees, 1u);
    EXPECT_EQ(tracker.totals().frees, 3u);
    EXPECT_EQ(tracker.outstanding_count(), 0u);
    tracker.settle();
    EXPECT_EQ(tracker.totals().replaced, 0u);
    EXPECT_EQ(test::totals_fields(test::sum_over_sites(tracker)), test::totals_fields(tracker.totals()));
}

TEST(Tracker, TwoLateFreesOfAPointerReallocatedTwiceEachFreeTheirOwnAllocation) {
    // CPU1 frees A (flagged; window [0, 100]: stamped 100, window 100).
    // CPU0 allocates B at 10, taking A's pointer before that free sorts.
    // CPU2 frees B (flagged; window [11, 50]).
    // CPU0 allocates C at 20, taking the pointer again; A is still displaced.
    // Merged by stamp: the frees come after all three allocations.
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 0, .cpu = 0, .ptr = kP1, .site = kAllocA, .req = 60, .alloc = 64}));
    tracker.apply(alloc_event({.ts = 10, .cpu = 0, .ptr = kP1, .site = kAllocB, .req = 100, .alloc = 128}));
    tracker.apply(alloc_event({.ts = 20, .cpu = 0, .ptr = kP1, .site = kAllocC, .req = 20, .alloc = 32}));
    EXPECT_EQ(tracker.displaced_count(), 2u);
    EXPECT_EQ(tracker.totals().replaced, 0u);

    // From 11 at the earliest: not before B displaced A (10), but before C
    // displaced B (20): B's free.
    const Event free_b = free_event({.ts = 50, .cpu = 2, .ptr = kP1, .site = kFreeF, .kind = EventKind::cache_free,
                                     .flags = KLEAK_TS_LOWER_BOUND, .window = 39});
    ASSERT_EQ(earliest_free_ns(free_b), 11u);
    tracker.apply(free_b);
    EXPECT_EQ(site_of(tracker, kAllocB).frees, 1u);
    EXPECT_EQ(site_of(tracker, kAllocA).frees, 0u);
    EXPECT_EQ(tracker.displaced_count(), 1u);

    // From 0: before B displaced A: A's free.
    const Event free_a = free_event({.ts = 100, .cpu = 1, .ptr = kP1, .site = kFreeF,
                                     .flags = KLEAK_TS_LOWER_BOUND, .window = 100});
    ASSERT_EQ(earliest_free_ns(free_a), 0u);
    tracker.apply(free_a);
    EXPECT_EQ(site_of(tracker, kAllocA).frees, 1u);
    EXPECT_EQ(site_of(tracker, kAllocA).bytes_freed, 64u);
    EXPECT_EQ(tracker.displaced_count(), 0u);

    tracker.settle();
    EXPECT_EQ(tracker.totals().frees, 2u);
    EXPECT_EQ(tracker.totals().reordered_frees, 2u);
    EXPECT_EQ(tracker.totals().replaced, 0u);
    EXPECT_EQ(tracker.totals().unmatched_frees, 0u);
    EXPECT_EQ(site_of(tracker, kFreeF).free_calls, 2u);
    // C is live, alone.
    EXPECT_EQ(test::outstanding_entries(tracker),
              (std::vector<test::OutstandingEntry>{{kP1, rounded_birth_ns(20), kAllocC, 32}}));
    EXPECT_EQ(tracker.totals().outstanding, 1u);
    EXPECT_EQ(tracker.totals().outstanding_bytes, 32u);
    EXPECT_EQ(test::totals_fields(test::sum_over_sites(tracker)), test::totals_fields(tracker.totals()));
}

TEST(Tracker, AFreeWithAnUnboundedWindowClaimsADisplacedEntryWhateverItsTime) {
    // A window of kUnboundedWindow: the free may have run any time before
    // its stamp. Its stamp here is less than the window (so ts - window
    // would wrap), yet it must still claim the entry displaced at 1, the
    // earliest a displacement can be that any free can precede.
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 0, .ptr = kP1, .site = kAllocA, .req = 60, .alloc = 64}));
    tracker.apply(alloc_event({.ts = 1, .ptr = kP1, .site = kAllocB, .req = 100, .alloc = 128}));
    const std::uint64_t last_chance = 1 + Tracker::kDisplacedHorizonNs - 1;
    const Event free = free_event({.ts = last_chance, .ptr = kP1, .site = kFreeF, .flags = KLEAK_TS_LOWER_BOUND,
                                   .window = kUnboundedWindow});
    ASSERT_LT(last_chance, std::uint64_t{kUnboundedWindow});
    EXPECT_EQ(earliest_free_ns(free), 0u);
    tracker.apply(free);
    EXPECT_EQ(tracker.totals().reordered_frees, 1u);
    EXPECT_EQ(site_of(tracker, kAllocA).frees, 1u);
    EXPECT_EQ(site_of(tracker, kAllocB).frees, 0u);
    EXPECT_EQ(tracker.displaced_count(), 0u);

    // The same at a stamp past 2^32 ns (what close_window makes of a long
    // window): still reaches back before a displacement the horizon keeps.
    const std::uint64_t late = std::uint64_t{10} << 32;
    tracker.apply(alloc_event({.ts = late - 2, .ptr = kP2, .site = kAllocA, .req = 8, .alloc = 8}));
    tracker.apply(alloc_event({.ts = late - 1, .ptr = kP2, .site = kAllocB, .req = 16, .alloc = 16}));
    tracker.apply(free_event({.ts = late, .ptr = kP2, .site = kFreeF, .flags = KLEAK_TS_LOWER_BOUND,
                              .window = kUnboundedWindow}));
    EXPECT_EQ(tracker.totals().reordered_frees, 2u);
    EXPECT_EQ(site_of(tracker, kAllocA).frees, 2u);
    EXPECT_EQ(site_of(tracker, kAllocA).bytes_freed, 72u);
    tracker.settle();
    EXPECT_EQ(tracker.totals().replaced, 0u);
    EXPECT_EQ(test::outstanding_entries(tracker),
              (std::vector<test::OutstandingEntry>{{kP1, rounded_birth_ns(1), kAllocB, 128},
                                                   {kP2, rounded_birth_ns(late - 1), kAllocB, 16}}));
}

TEST(Tracker, OverflowClassEntriesSurviveDisplacement) {
    // A table of 2 classes: entries past it keep their class in a side map
    // while live; displaced, they must keep it still.
    Tracker tracker(2);
    tracker.apply(alloc_event({.ts = 1, .ptr = kP1, .site = kAllocA, .req = 8, .alloc = 8}));
    tracker.apply(alloc_event({.ts = 2, .ptr = kP2, .site = kAllocA, .req = 16, .alloc = 16}));
    tracker.apply(alloc_event({.ts = 3, .ptr = kP3, .site = kAllocB, .req = 32, .alloc = 32}));  // overflows
    ASSERT_EQ(tracker.overflow_count(), 1u);

    // An overflowed entry displaced by a classed one: out of the side map,
    // listed with its own site and size, freed late with them.
    tracker.apply(alloc_event({.ts = 4, .ptr = kP3, .site = kAllocA, .req = 8, .alloc = 8}));
    EXPECT_EQ(tracker.overflow_count(), 0u);
    EXPECT_EQ(test::outstanding_entries(tracker),
              (std::vector<test::OutstandingEntry>{{kP1, rounded_birth_ns(1), kAllocA, 8},
                                                   {kP2, rounded_birth_ns(2), kAllocA, 16},
                                                   {kP3, rounded_birth_ns(4), kAllocA, 8},
                                                   {kP3, rounded_birth_ns(3), kAllocB, 32}}));
    tracker.apply(free_event({.ts = 10, .ptr = kP3, .site = kFreeF, .window = 8}));  // from 2, before 4
    EXPECT_EQ(tracker.totals().reordered_frees, 1u);
    EXPECT_EQ(site_of(tracker, kAllocB).frees, 1u);
    EXPECT_EQ(site_of(tracker, kAllocB).bytes_freed, 32u);
    EXPECT_EQ(site_of(tracker, kAllocB).outstanding, 0u);

    // A classed entry displaced by an overflowing one: the new one enters the
    // side map, the displaced one keeps its class and is replaced with it.
    tracker.apply(alloc_event({.ts = 20, .ptr = kP1, .site = kAllocB, .req = 64, .alloc = 64}));
    EXPECT_EQ(tracker.overflow_count(), 1u);
    tracker.settle();
    EXPECT_EQ(site_of(tracker, kAllocA).replaced, 1u);
    EXPECT_EQ(site_of(tracker, kAllocA).replaced_bytes, 8u);
    tracker.apply(free_event({.ts = 30, .ptr = kP1, .site = kFreeF}));
    EXPECT_EQ(site_of(tracker, kAllocB).frees, 2u);
    EXPECT_EQ(site_of(tracker, kAllocB).bytes_freed, 96u);
    EXPECT_EQ(tracker.overflow_count(), 0u);
    EXPECT_EQ(tracker.totals().outstanding, 2u);
    EXPECT_EQ(tracker.totals().outstanding_bytes, 24u);
    EXPECT_EQ(test::totals_fields(test::sum_over_sites(tracker)), test::totals_fields(tracker.totals()));
}

// A random stream over few pointers, so replacements, double and unmatched
// frees, pointer 0 and printk events all happen often; half of the frees
// were stamped late (ABI 2), with windows reaching up to ~50 events back, so
// some of them free an entry a reallocation displaced.
std::vector<Event> churn(std::uint64_t seed, std::size_t n) {
    std::mt19937_64 rng(seed);
    std::vector<Event> out;
    std::uint64_t ts = 0;
    for (std::size_t i = 0; i < n; ++i) {
        ts += rng() % 400'000;  // ~0.2 ms apart: several events per time unit
        const std::uint64_t ptr = rng() % 97 == 0 ? 0 : 0xffff888000000000ULL + (rng() % 300) * 64;
        const std::uint64_t site = 0xffffffff81000000ULL + (rng() % 12) * 16;
        const std::uint32_t alloc = 8u << (rng() % 5);
        switch (rng() % 9) {
            case 0:
                out.push_back(free_event({.ts = ts, .ptr = ptr, .site = 0}));
                out.back().kind = EventKind::printk;
                break;
            case 1: case 2: case 3: {
                const EventKind kind = rng() % 2 ? EventKind::kfree : EventKind::cache_free;
                const std::uint64_t window = rng() % 2 == 0 ? std::min<std::uint64_t>(ts, rng() % 10'000'000) : 0;
                out.push_back(free_event({.ts = ts, .ptr = ptr, .site = site, .kind = kind,
                                          .flags = static_cast<std::uint16_t>(window > 0 ? KLEAK_TS_LOWER_BOUND : 0),
                                          .window = static_cast<std::uint32_t>(window)}));
                break;
            }
            default:
                out.push_back(alloc_event({.ts = ts, .ptr = ptr, .site = site, .req = alloc - 3, .alloc = alloc,
                                           .kind = rng() % 2 ? EventKind::kmalloc : EventKind::cache_alloc}));
        }
    }
    return out;
}

void expect_same_state(const Tracker& got, const Tracker& expected) {
    EXPECT_EQ(test::totals_fields(got.totals()), test::totals_fields(expected.totals()));
    EXPECT_EQ(test::sites_by_address(got), test::sites_by_address(expected));
    EXPECT_EQ(test::outstanding_entries(got), test::outstanding_entries(expected));
    EXPECT_EQ(got.displaced_count(), expected.displaced_count());
}

TEST(Tracker, ApplyingABatchEqualsApplyingEachEvent) {
    const std::vector<Event> events = churn(1, 20'000);
    Tracker one_by_one;
    for (const Event& e : events) one_by_one.apply(e);
    Tracker batched;
    // Uneven batches, shorter and longer than the prefetch distance.
    std::size_t at = 0;
    for (std::size_t len : {0, 1, 5, 13, 100, 4000}) {
        batched.apply(std::span(events).subspan(at, len));
        at += len;
    }
    batched.apply(std::span(events).subspan(at));
    expect_same_state(batched, one_by_one);
    EXPECT_GT(one_by_one.totals().replaced, 100u);
    EXPECT_GT(one_by_one.totals().reordered_frees, 20u);
    EXPECT_GT(one_by_one.displaced_count(), 10u);
    EXPECT_GT(one_by_one.totals().unmatched_frees, 100u);
    EXPECT_GT(one_by_one.outstanding_count(), 100u);
}

TEST(Tracker, OverflowingTheClassTableChangesNothingObservable) {
    // 12 sites x 5 sizes = 60 classes; a table of 7 overflows on most of them.
    const std::vector<Event> events = churn(2, 20'000);
    Tracker roomy;
    roomy.apply(events);
    Tracker cramped(7);
    cramped.apply(events);
    expect_same_state(cramped, roomy);
    EXPECT_EQ(roomy.class_overflows(), 0u);
    EXPECT_EQ(cramped.class_count(), 7u);
    EXPECT_GT(cramped.class_overflows(), 1000u);
    EXPECT_GT(cramped.overflow_count(), 0u);
    // Displaced overflow entries (and their late frees) are in the comparison.
    EXPECT_GT(cramped.displaced_count(), 10u);
    EXPECT_GT(cramped.totals().reordered_frees, 20u);
    for (std::uint64_t born_before : {std::uint64_t{0}, std::uint64_t{1'000'000'000}, ~std::uint64_t{0}}) {
        const auto a = roomy.outstanding_born_by(born_before);
        const auto b = cramped.outstanding_born_by(born_before);
        ASSERT_EQ(a.size(), b.size());
        // Site ids agree: both trackers interned the same stream.
        for (std::size_t i = 0; i < a.size(); ++i) {
            EXPECT_EQ(a[i].count, b[i].count) << "site " << i;
            EXPECT_EQ(a[i].bytes, b[i].bytes) << "site " << i;
            EXPECT_EQ(a[i].oldest_ts_ns, b[i].oldest_ts_ns) << "site " << i;
        }
    }
}

// The rules of tracker.h for a pointer allocated again while outstanding,
// written out plainly over ordered maps: the reference random streams are
// checked against. Births are kept exact here.
struct DisplacementModel {
    struct Entry {
        std::uint64_t birth_ns;
        std::uint64_t site;
        std::uint32_t bytes;
    };
    struct Displaced {
        Entry entry;
        std::uint64_t at_ns;  // the displacing allocation's time
    };
    std::map<std::uint64_t, Entry> live;
    // Per pointer, in the order they were displaced: a pointer can be
    // displaced again while an older entry still waits for its free.
    std::map<std::uint64_t, std::vector<Displaced>> displaced;
    std::uint64_t frees = 0, unmatched_frees = 0, replaced = 0, reordered_frees = 0;
    // How often the rules that need several entries per pointer came into play.
    std::uint64_t displaced_while_displaced = 0;  // a displacement with older entries still waiting
    std::uint64_t claims_past_older = 0;          // a free that skipped an older entry it cannot be

    std::size_t displaced_count() const {
        std::size_t n = 0;
        for (const auto& [ptr, list] : displaced) n += list.size();
        return n;
    }

    // Every entry on its own, kDisplacedHorizonNs after its own displacement.
    void expire(std::uint64_t now_ns) {
        for (auto it = displaced.begin(); it != displaced.end();) {
            std::erase_if(it->second, [&](const Displaced& d) {
                const bool due = d.at_ns + Tracker::kDisplacedHorizonNs <= now_ns;
                replaced += due;
                return due;
            });
            it = it->second.empty() ? displaced.erase(it) : std::next(it);
        }
    }

    void apply(const Event& e) {
        expire(e.ts_ns);  // any event moves event time on, printk included
        if (e.kind == EventKind::printk) return;
        if (is_alloc(e.kind)) {
            const auto it = live.find(e.ptr);
            if (it != live.end()) {
                std::vector<Displaced>& list = displaced[e.ptr];
                displaced_while_displaced += !list.empty();
                list.push_back(Displaced{it->second, e.ts_ns});
            }
            live[e.ptr] = Entry{e.ts_ns, e.call_site, e.bytes_alloc};
            return;
        }
        // A free that may have run before a reallocation of its pointer is
        // the free of the oldest entry that reallocation displaced; any other
        // goes to the live one.
        const auto d = displaced.find(e.ptr);
        if (d != displaced.end()) {
            std::vector<Displaced>& list = d->second;
            const auto claimed = std::find_if(list.begin(), list.end(),
                                              [&](const Displaced& x) { return earliest_free_ns(e) < x.at_ns; });
            if (claimed != list.end()) {
                claims_past_older += claimed != list.begin();
                list.erase(claimed);
                if (list.empty()) displaced.erase(d);
                ++frees;
                ++reordered_frees;
                return;
            }
        }
        if (live.erase(e.ptr) > 0) {
            ++frees;
        } else {
            ++unmatched_frees;
        }
    }

    void settle() { expire(std::numeric_limits<std::uint64_t>::max()); }

    // As test::outstanding_entries() lists the tracker's (births rounded up
    // to their unit, as the tracker keeps them).
    std::vector<test::OutstandingEntry> entries() const {
        std::vector<test::OutstandingEntry> out;
        for (const auto& [ptr, e] : live) out.emplace_back(ptr, rounded_birth_ns(e.birth_ns), e.site, e.bytes);
        for (const auto& [ptr, list] : displaced)
            for (const Displaced& d : list)
                out.emplace_back(ptr, rounded_birth_ns(d.entry.birth_ns), d.entry.site, d.entry.bytes);
        std::sort(out.begin(), out.end());
        return out;
    }
};

void expect_matches_model(const Tracker& tracker, const DisplacementModel& model) {
    EXPECT_EQ(tracker.totals().frees, model.frees);
    EXPECT_EQ(tracker.totals().unmatched_frees, model.unmatched_frees);
    EXPECT_EQ(tracker.totals().replaced, model.replaced);
    EXPECT_EQ(tracker.totals().reordered_frees, model.reordered_frees);
    EXPECT_EQ(tracker.displaced_count(), model.displaced_count());
    EXPECT_EQ(tracker.outstanding_count(), model.live.size() + model.displaced_count());
    EXPECT_EQ(tracker.totals().outstanding, model.live.size() + model.displaced_count());
    EXPECT_EQ(test::outstanding_entries(tracker), model.entries());
    EXPECT_EQ(test::totals_fields(test::sum_over_sites(tracker)), test::totals_fields(tracker.totals()));
}

TEST(Tracker, DisplacementFollowsItsRulesOnARandomStream) {
    const std::vector<Event> events = churn(4, 20'000);
    Tracker tracker;
    DisplacementModel model;
    // Compared along the way too: expiry happens mid-stream, not only at the end.
    for (std::size_t i = 0; i < events.size(); ++i) {
        tracker.apply(events[i]);
        model.apply(events[i]);
        if (i % 5'000 == 4'999) {
            SCOPED_TRACE(i);
            expect_matches_model(tracker, model);
        }
    }
    EXPECT_GT(model.reordered_frees, 20u);
    EXPECT_GT(model.displaced_count(), 10u);
    EXPECT_GT(model.replaced, 100u);
    // Several entries per pointer, and frees that skip an older one, happen too.
    EXPECT_GT(model.displaced_while_displaced, 1000u);
    EXPECT_GT(model.claims_past_older, 20u);

    tracker.settle();
    model.settle();
    expect_matches_model(tracker, model);
    EXPECT_EQ(tracker.displaced_count(), 0u);
}

TEST(Tracker, OutstandingBornByCountsOnlyAllocationsSurelyThatOld) {
    // Brute force over the model's entries (displaced ones too): an entry
    // counts iff its rounded (latest possible) birth is at or before the
    // cutoff; the true birth is then at or before it too.
    const std::vector<Event> events = churn(3, 5'000);
    Tracker tracker;
    tracker.apply(events);
    DisplacementModel model;
    for (const Event& e : events) model.apply(e);
    ASSERT_EQ(test::outstanding_entries(tracker), model.entries());
    EXPECT_GT(tracker.displaced_count(), 0u);  // so the scan of displaced entries is checked too

    std::map<std::uint64_t, std::size_t> site_id;
    for (std::size_t i = 0; i < tracker.sites().size(); ++i) site_id[tracker.sites()[i].call_site] = i;
    std::vector<DisplacementModel::Entry> all;
    for (const auto& [ptr, e] : model.live) all.push_back(e);
    for (const auto& [ptr, list] : model.displaced)
        for (const DisplacementModel::Displaced& d : list) all.push_back(d.entry);

    const std::uint64_t last_ts = events.back().ts_ns;
    std::size_t partial_cutoffs = 0;
    for (std::uint64_t born_before = 0; born_before < last_ts; born_before += last_ts / 37 + 12'345) {
        const auto ages = tracker.outstanding_born_by(born_before);
        std::vector<SiteAge> expected(tracker.sites().size());
        for (const DisplacementModel::Entry& e : all) {
            const std::uint64_t reported = rounded_birth_ns(e.birth_ns);
            EXPECT_GE(reported, e.birth_ns);
            EXPECT_LT(reported - e.birth_ns, std::uint64_t{1} << 20);
            if (reported > born_before) continue;
            EXPECT_LE(e.birth_ns, born_before);
            SiteAge& age = expected[site_id.at(e.site)];
            ++age.count;
            age.bytes += e.bytes;
            age.oldest_ts_ns = std::min(age.oldest_ts_ns, reported);
        }
        std::uint64_t counted = 0;
        ASSERT_EQ(ages.size(), expected.size());
        for (std::size_t i = 0; i < ages.size(); ++i) {
            EXPECT_EQ(ages[i].count, expected[i].count);
            EXPECT_EQ(ages[i].bytes, expected[i].bytes);
            EXPECT_EQ(ages[i].oldest_ts_ns, expected[i].oldest_ts_ns);
            counted += ages[i].count;
        }
        if (counted > 0 && counted < tracker.outstanding_count()) ++partial_cutoffs;
    }
    EXPECT_GT(partial_cutoffs, 10u);  // the cutoffs really split the live set
}

TEST(Tracker, OutstandingBornByCountsPointerZeroOverflowedAndDisplacedEntries) {
    // Pointer 0 (kept outside the slots), overflowed classes and displaced
    // entries all occur in this stream; a table of 7 classes overflows.
    const std::vector<Event> events = churn(4, 20'000);
    Tracker tracker(7);
    tracker.apply(events);
    ASSERT_GT(tracker.overflow_count(), 0u);
    ASSERT_GT(tracker.displaced_count(), 0u);
    bool pointer_0_outstanding = false;
    tracker.for_each_outstanding([&](std::uint64_t ptr, const OutstandingAllocation&) { pointer_0_outstanding |= ptr == 0; });
    ASSERT_TRUE(pointer_0_outstanding);
    std::uint64_t everything = 0;
    for (const SiteAge& age : tracker.outstanding_born_by(~std::uint64_t{0})) everything += age.count;
    EXPECT_EQ(everything, tracker.outstanding_count());
}

TEST(Tracker, OutstandingBornByAtTheUnitBoundary) {
    constexpr std::uint64_t kUnit = std::uint64_t{1} << 20;
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 7 * kUnit, .ptr = kP1, .site = kAllocA, .req = 8, .alloc = 8}));      // first ns
    tracker.apply(alloc_event({.ts = 9 * kUnit - 1, .ptr = kP2, .site = kAllocB, .req = 16, .alloc = 16}));  // last ns
    const auto count_at = [&](std::uint64_t born_before, std::size_t site) {
        return tracker.outstanding_born_by(born_before)[site].count;
    };
    // P1 (unit 7) counts only once the whole unit is past: never too young.
    EXPECT_EQ(count_at(7 * kUnit, 0), 0u);
    EXPECT_EQ(count_at(8 * kUnit - 2, 0), 0u);
    EXPECT_EQ(count_at(8 * kUnit - 1, 0), 1u);
    // P2 was made on its unit's last ns: exact.
    EXPECT_EQ(count_at(9 * kUnit - 2, 1), 0u);
    EXPECT_EQ(count_at(9 * kUnit - 1, 1), 1u);
    EXPECT_EQ(tracker.outstanding_born_by(9 * kUnit - 1)[1].oldest_ts_ns, 9 * kUnit - 1);
    EXPECT_EQ(tracker.outstanding_born_by(~std::uint64_t{0})[0].oldest_ts_ns, 8 * kUnit - 1);
    EXPECT_EQ(tracker.outstanding_born_by(~std::uint64_t{0})[0].bytes, 8u);
}

// --- the age index (age_index.h) ------------------------------------------------

// Per site, how many live allocations the scan finds born in a unit before `units`.
std::vector<std::uint64_t> scan_counts(const Tracker& tracker, std::uint64_t units) {
    std::vector<std::uint64_t> out;
    const std::uint64_t born_before = units == 0 ? 0 : latest_birth_ns(units - 1);
    for (const SiteAge& a : tracker.outstanding_born_by(born_before)) out.push_back(units == 0 ? 0 : a.count);
    return out;
}

// Checked along a stream with displacement, reordered frees, expiry and
// pointer 0, against the exact scan of the same tracker: the index never
// counts an allocation the scan would not (born before the threshold's unit),
// and leaves out only those of the epoch the threshold falls in, which is at
// most max(16 units, its age / 16) long.
void expect_index_within_an_epoch_of_the_scan(const Tracker& tracker, std::uint64_t newest_ts) {
    ASSERT_TRUE(tracker.ages_indexed());
    std::uint64_t all = 0;
    for (const SiteAge& a : tracker.outstanding_born_by_epochs(~std::uint64_t{0})) all += a.count;
    EXPECT_EQ(all, tracker.outstanding_count());
    // The open epoch ends at most 16 units after the newest allocation's unit.
    const std::uint64_t now_units = birth_unit(newest_ts) + AgeIndex::kBaseUnits;
    std::size_t left_out_somewhere = 0;
    for (std::uint64_t back = 0; back <= now_units; back += 1 + back / 3) {
        const std::uint64_t units = now_units - back;
        const std::uint64_t born_before = units == 0 ? 0 : latest_birth_ns(units - 1);
        const auto epochs = tracker.outstanding_born_by_epochs(born_before);
        const auto exact = tracker.outstanding_born_by(born_before);
        const std::uint64_t slack = std::max(AgeIndex::kBaseUnits, (now_units - units) / AgeIndex::kAgeRatio) + 1;
        const auto surely = scan_counts(tracker, units > slack ? units - slack : 0);
        ASSERT_EQ(epochs.size(), exact.size());
        for (std::size_t site = 0; site < epochs.size(); ++site) {
            SCOPED_TRACE(testing::Message() << "site " << site << " units " << units << " slack " << slack);
            EXPECT_LE(epochs[site].count, exact[site].count);
            EXPECT_GE(epochs[site].count, surely[site]);
            if (epochs[site].count > 0) {
                // The oldest is reported from its epoch: never older than the scan's.
                EXPECT_GE(epochs[site].oldest_ts_ns, exact[site].oldest_ts_ns);
                EXPECT_LE(epochs[site].oldest_ts_ns, born_before);
                EXPECT_LE(epochs[site].bytes, exact[site].bytes);
            }
            left_out_somewhere += epochs[site].count < exact[site].count;
        }
    }
    EXPECT_GT(left_out_somewhere, 0u);  // the thresholds do fall inside epochs
}

TEST(Tracker, AgeIndexAgreesWithTheScanToWithinTheThresholdsEpoch) {
    const std::vector<Event> events = churn(5, 40'000);
    Tracker indexed;
    indexed.index_ages();
    Tracker plain;
    for (std::size_t i = 0; i < events.size(); ++i) {
        indexed.apply(events[i]);
        plain.apply(events[i]);
        if (i % 10'000 == 9'999) {
            SCOPED_TRACE(i);
            expect_index_within_an_epoch_of_the_scan(indexed, events[i].ts_ns);
        }
    }
    expect_same_state(indexed, plain);  // the index changes nothing else
    EXPECT_GT(indexed.totals().replaced, 100u);
    EXPECT_GT(indexed.totals().reordered_frees, 20u);
    indexed.settle();
    expect_index_within_an_epoch_of_the_scan(indexed, events.back().ts_ns);
    EXPECT_FALSE(plain.ages_indexed());
}

TEST(Tracker, AgeIndexCountsLongLivedAllocationsAcrossMergedEpochs) {
    // An allocation every 10 ms over 20 s, every other one freed 5 ms later
    // (young: the open epoch) or 5 s later (old: a closed, merged epoch).
    Tracker tracker;
    tracker.index_ages();
    std::vector<std::pair<std::uint64_t, std::uint64_t>> pending;  // (free at, ptr)
    const std::uint64_t ms = 1'000'000;
    std::uint64_t ts = 0;
    for (std::uint64_t i = 0; i < 2000; ++i) {
        ts = i * 10 * ms;
        while (!pending.empty() && pending.front().first <= ts) {
            tracker.apply(free_event({.ts = pending.front().first, .ptr = pending.front().second, .site = kFreeF}));
            pending.erase(pending.begin());
        }
        const std::uint64_t ptr = kP1 + i * 64;
        tracker.apply(alloc_event({.ts = ts, .ptr = ptr, .site = i % 3 ? kAllocA : kAllocB, .req = 8, .alloc = 8}));
        if (i % 2 == 0) pending.push_back({ts + (i % 4 == 0 ? 5 * ms : 5000 * ms), ptr});
        std::sort(pending.begin(), pending.end());
    }
    expect_index_within_an_epoch_of_the_scan(tracker, ts);
    // Asked about every birth time, the index counts every live allocation.
    std::uint64_t everything = 0;
    for (const SiteAge& a : tracker.outstanding_born_by_epochs(~std::uint64_t{0})) everything += a.count;
    EXPECT_EQ(everything, tracker.outstanding_count());
}

TEST(Tracker, AgeIndexIsNotUsedOnceTheClassTableOverflowed) {
    Tracker cramped(1);
    cramped.index_ages();
    EXPECT_TRUE(cramped.ages_indexed());
    cramped.apply(alloc_event({.ts = 1, .ptr = kP1, .site = kAllocA, .req = 8, .alloc = 8}));
    cramped.apply(alloc_event({.ts = 2, .ptr = kP2, .site = kAllocB, .req = 8, .alloc = 8}));
    EXPECT_FALSE(cramped.ages_indexed());  // kP2 has no class: the scan answers
    cramped.reset();
    EXPECT_TRUE(cramped.ages_indexed());
    for (const SiteAge& a : cramped.outstanding_born_by_epochs(~std::uint64_t{0})) EXPECT_EQ(a.count, 0u);
}

TEST(Tracker, ResetEmptiesTheAgeIndexAndKeepsIt) {
    Tracker tracker;
    tracker.index_ages();
    tracker.apply(alloc_event({.ts = 5'000'000'000, .ptr = kP1, .site = kAllocA, .req = 8, .alloc = 8}));
    ASSERT_EQ(tracker.outstanding_born_by_epochs(~std::uint64_t{0}).at(0).count, 1u);
    tracker.reset();
    EXPECT_TRUE(tracker.outstanding_born_by_epochs(~std::uint64_t{0}).empty());
    tracker.apply(alloc_event({.ts = 6'000'000'000, .ptr = kP2, .site = kAllocB, .req = 8, .alloc = 8}));
    EXPECT_EQ(tracker.outstanding_born_by_epochs(~std::uint64_t{0}).at(0).count, 1u);
}

}  // namespace
}  // namespace kleak::core
