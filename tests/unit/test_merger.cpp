// Merger: per-CPU staging, release in (timestamp, CPU, arrival) order up to a
// watermark, and `late` accounting.
#include <gtest/gtest.h>

#include <limits>
#include <utility>
#include <vector>

#include "core/merger.h"
#include "core/tracker.h"
#include "test_helpers.h"

namespace kleak::core {
namespace {

using test::alloc_event;
using test::free_event;

constexpr std::uint64_t kPtr = 0xffff888000001000;
constexpr std::uint64_t kAllocSite = 0xffffffff81100000;
constexpr std::uint64_t kOtherAllocSite = 0xffffffff81100100;
constexpr std::uint64_t kFreeSite = 0xffffffff81200000;

// A record tagged by `ptr`, so tests can tell equal-timestamp records apart.
Event tagged(std::uint64_t ts, std::uint16_t cpu, std::uint64_t tag = 0) {
    return free_event({.ts = ts, .cpu = cpu, .ptr = tag});
}

std::vector<Event> release(Merger& merger, std::uint64_t watermark) {
    std::vector<Event> out;
    merger.release_until(watermark, out);
    return out;
}

std::vector<Event> release_everything(Merger& merger) {
    std::vector<Event> out;
    merger.release_all(out);
    return out;
}

// (ts, cpu, tag) of each record, in release order.
std::vector<std::tuple<std::uint64_t, int, std::uint64_t>> order_of(const std::vector<Event>& events) {
    std::vector<std::tuple<std::uint64_t, int, std::uint64_t>> out;
    for (const Event& e : events) out.emplace_back(e.ts_ns, e.cpu, e.ptr);
    return out;
}

std::vector<std::uint64_t> timestamps(const std::vector<Event>& events) {
    std::vector<std::uint64_t> out;
    for (const Event& e : events) out.push_back(e.ts_ns);
    return out;
}

TEST(Merger, CrossCpuInversion) {
    // CPU1's kfree is read from its ring before CPU0's kmalloc that it frees.
    const Event kmalloc = alloc_event({.ts = 1000, .cpu = 0, .ptr = kPtr, .site = kAllocSite, .req = 60, .alloc = 64});
    const Event kfree = free_event({.ts = 1500, .cpu = 1, .ptr = kPtr, .site = kFreeSite});
    Merger merger(2);
    merger.stage(kfree);
    merger.stage(kmalloc);

    const std::vector<Event> released = release(merger, 2000);
    ASSERT_EQ(released.size(), 2u);
    EXPECT_EQ(released[0].kind, EventKind::kmalloc);
    EXPECT_EQ(released[1].kind, EventKind::kfree);
    EXPECT_EQ(merger.late(), 0u);

    Tracker tracker;
    tracker.apply(released);
    EXPECT_EQ(tracker.totals().frees, 1u);
    EXPECT_EQ(tracker.totals().unmatched_frees, 0u);
    EXPECT_EQ(tracker.totals().outstanding, 0u);
    EXPECT_EQ(tracker.outstanding_count(), 0u);

    // What the merge prevents: applying in read order gets it wrong.
    Tracker unmerged;
    unmerged.apply(kfree);
    unmerged.apply(kmalloc);
    EXPECT_EQ(unmerged.totals().unmatched_frees, 1u);
    EXPECT_EQ(unmerged.totals().outstanding, 1u);
}

TEST(Merger, InCpuInversion) {
    // An IRQ between bpf_ktime_get_ns() and submit commits records out of order
    // within one ring.
    Merger merger(1);
    merger.stage(free_event({.ts = 300, .cpu = 0, .ptr = kPtr, .site = kFreeSite}));
    merger.stage(tagged(100, 0, 1));
    merger.stage(alloc_event({.ts = 200, .cpu = 0, .ptr = kPtr, .site = kAllocSite, .req = 8, .alloc = 8}));

    const std::vector<Event> released = release(merger, 1000);
    EXPECT_EQ(timestamps(released), (std::vector<std::uint64_t>{100, 200, 300}));

    Tracker tracker;
    tracker.apply(std::span(released).subspan(1));
    EXPECT_EQ(tracker.totals().frees, 1u);
    EXPECT_EQ(tracker.totals().unmatched_frees, 0u);
}

TEST(Merger, AddressReuseAcrossCpusInsideOneWindow) {
    // CPU0 frees P, CPU1 gets P back from the allocator microseconds later.
    // Read adversely: CPU1's new allocation first, then CPU0's free before
    // CPU0's original allocation.
    const Event first_alloc = alloc_event({.ts = 10'000, .cpu = 0, .ptr = kPtr, .site = kAllocSite, .req = 100, .alloc = 128});
    const Event free_on_cpu0 = free_event({.ts = 20'000, .cpu = 0, .ptr = kPtr, .site = kFreeSite});
    const Event realloc_on_cpu1 =
        alloc_event({.ts = 23'000, .cpu = 1, .ptr = kPtr, .site = kOtherAllocSite, .req = 90, .alloc = 96});
    Merger merger(2);
    merger.stage(realloc_on_cpu1);
    merger.stage(free_on_cpu0);
    merger.stage(first_alloc);

    const std::vector<Event> released = release(merger, 50'000);
    EXPECT_EQ(order_of(released), order_of({first_alloc, free_on_cpu0, realloc_on_cpu1}));

    Tracker tracker;
    tracker.apply(released);
    EXPECT_EQ(tracker.outstanding_count(), 1u);
    EXPECT_EQ(tracker.totals().outstanding, 1u);
    EXPECT_EQ(tracker.totals().outstanding_bytes, 96u);
    EXPECT_EQ(tracker.totals().replaced, 0u);
    EXPECT_EQ(tracker.totals().unmatched_frees, 0u);
    EXPECT_EQ(tracker.totals().frees, 1u);
    const auto live = test::outstanding_by_ptr(tracker);
    ASSERT_EQ(live.size(), 1u);
    EXPECT_EQ(live.at(kPtr), std::make_tuple(std::uint64_t{23'000}, kOtherAllocSite, std::uint32_t{96}));
}

TEST(Merger, TiesBrokenByLowerCpuThenArrival) {
    Merger merger(3);
    merger.stage(tagged(100, 2, 1));
    merger.stage(tagged(100, 0, 2));
    merger.stage(tagged(100, 1, 3));
    merger.stage(tagged(100, 0, 4));
    merger.stage(tagged(50, 2, 5));

    EXPECT_EQ(order_of(release(merger, 100)),
              (std::vector<std::tuple<std::uint64_t, int, std::uint64_t>>{
                  {50, 2, 5}, {100, 0, 2}, {100, 0, 4}, {100, 1, 3}, {100, 2, 1}}));
}

TEST(Merger, TieAtTheEndOfARunGoesToTheLowerCpu) {
    // CPU1 runs ahead of CPU0 until a tie: the tie must interrupt CPU1's run.
    Merger merger(2);
    merger.stage(tagged(100, 1, 1));
    merger.stage(tagged(110, 1, 2));
    merger.stage(tagged(120, 1, 3));
    merger.stage(tagged(130, 1, 4));
    merger.stage(tagged(120, 0, 5));
    merger.stage(tagged(130, 0, 6));

    EXPECT_EQ(order_of(release(merger, 1000)),
              (std::vector<std::tuple<std::uint64_t, int, std::uint64_t>>{
                  {100, 1, 1}, {110, 1, 2}, {120, 0, 5}, {120, 1, 3}, {130, 0, 6}, {130, 1, 4}}));
}

TEST(Merger, EqualTimestampsOnOneCpuKeepArrivalOrderWhenSorted) {
    Merger merger(1);
    merger.stage(tagged(200, 0, 1));
    merger.stage(tagged(100, 0, 2));  // forces a sort
    merger.stage(tagged(200, 0, 3));
    merger.stage(tagged(200, 0, 4));

    EXPECT_EQ(order_of(release(merger, 300)),
              (std::vector<std::tuple<std::uint64_t, int, std::uint64_t>>{
                  {100, 0, 2}, {200, 0, 1}, {200, 0, 3}, {200, 0, 4}}));
}

TEST(Merger, ManyEqualTimestampsKeepArrivalOrderWhenSorted) {
    // Enough records that an unstable sort would visibly reorder them.
    Merger merger(1);
    for (std::uint64_t tag = 0; tag < 200; ++tag) merger.stage(tagged(tag % 2 == 0 ? 500 : 400, 0, tag));
    const std::vector<Event> released = release(merger, 500);
    ASSERT_EQ(released.size(), 200u);
    for (std::size_t i = 0; i < 100; ++i) {
        EXPECT_EQ(released[i].ptr, 2 * i + 1) << i;          // the 400s, in arrival order
        EXPECT_EQ(released[100 + i].ptr, 2 * i) << 100 + i;  // then the 500s, in arrival order
    }
}

TEST(Merger, ReleasesOnlyUpToTheWatermarkAndKeepsTheRest) {
    Merger merger(2);
    for (std::uint64_t ts : {100, 200, 300}) merger.stage(tagged(ts, 0));
    for (std::uint64_t ts : {150, 250}) merger.stage(tagged(ts, 1));
    ASSERT_EQ(merger.staged(), 5u);

    // The watermark is inclusive.
    EXPECT_EQ(timestamps(release(merger, 200)), (std::vector<std::uint64_t>{100, 150, 200}));
    EXPECT_EQ(merger.staged(), 2u);

    EXPECT_EQ(timestamps(release(merger, 299)), (std::vector<std::uint64_t>{250}));
    EXPECT_EQ(merger.staged(), 1u);

    EXPECT_TRUE(release(merger, 299).empty());
    EXPECT_EQ(timestamps(release(merger, 300)), (std::vector<std::uint64_t>{300}));
    EXPECT_EQ(merger.staged(), 0u);
    EXPECT_EQ(merger.late(), 0u);
}

TEST(Merger, ReleaseAppendsToOutput) {
    Merger merger(1);
    merger.stage(tagged(10, 0, 2));
    std::vector<Event> out{tagged(1, 0, 1)};
    merger.release_until(10, out);
    EXPECT_EQ(order_of(out), (std::vector<std::tuple<std::uint64_t, int, std::uint64_t>>{{1, 0, 1}, {10, 0, 2}}));
}

TEST(Merger, LateRecordsAreCountedAndReleasedNextTime) {
    Merger merger(2);
    merger.stage(tagged(100, 0, 1));
    merger.stage(tagged(300, 1, 2));
    EXPECT_EQ(timestamps(release(merger, 200)), (std::vector<std::uint64_t>{100}));

    merger.stage(tagged(200, 1, 3));  // at the released watermark: late
    merger.stage(tagged(150, 0, 4));  // behind it: late
    merger.stage(tagged(201, 0, 5));  // ahead of it: on time
    EXPECT_EQ(merger.late(), 2u);
    EXPECT_EQ(merger.staged(), 4u);

    // Late records go out first, in timestamp order, with the rest.
    EXPECT_EQ(order_of(release(merger, 250)),
              (std::vector<std::tuple<std::uint64_t, int, std::uint64_t>>{{150, 0, 4}, {200, 1, 3}, {201, 0, 5}}));
    EXPECT_EQ(merger.late(), 2u);
    EXPECT_EQ(merger.staged(), 1u);
}

TEST(Merger, NothingIsLateBeforeTheFirstRelease) {
    Merger merger(1);
    merger.stage(tagged(0, 0));
    merger.stage(tagged(0, 0));
    EXPECT_EQ(merger.late(), 0u);
    EXPECT_EQ(release(merger, 0).size(), 2u);
    merger.stage(tagged(0, 0));
    EXPECT_EQ(merger.late(), 1u);
}

TEST(Merger, LateRecordsAfterAnEmptyReleaseStillCount) {
    // Releasing nothing still moves the watermark.
    Merger merger(1);
    EXPECT_TRUE(release(merger, 500).empty());
    merger.stage(tagged(500, 0));
    merger.stage(tagged(501, 0));
    EXPECT_EQ(merger.late(), 1u);
}

TEST(Merger, ReleaseAllReleasesEverything) {
    Merger merger(3);
    merger.stage(tagged(30, 2));
    merger.stage(tagged(10, 1));
    merger.stage(tagged(20, 0));
    merger.stage(tagged(5, 0));
    EXPECT_EQ(timestamps(release(merger, 10)), (std::vector<std::uint64_t>{5, 10}));

    EXPECT_EQ(timestamps(release_everything(merger)), (std::vector<std::uint64_t>{20, 30}));
    EXPECT_EQ(merger.staged(), 0u);
    EXPECT_TRUE(release_everything(merger).empty());
}

TEST(Merger, ReleaseAllIncludesTheLargestTimestamp) {
    // A corrupt recording can carry any timestamp; the merge must neither skip
    // nor mis-order records at the very top of the clock.
    constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
    Merger merger(3);
    merger.stage(tagged(kMax, 2, 1));
    merger.stage(tagged(kMax, 1, 2));
    merger.stage(tagged(7, 1, 3));
    merger.stage(tagged(kMax, 0, 4));

    EXPECT_EQ(order_of(release_everything(merger)),
              (std::vector<std::tuple<std::uint64_t, int, std::uint64_t>>{
                  {7, 1, 3}, {kMax, 0, 4}, {kMax, 1, 2}, {kMax, 2, 1}}));
    EXPECT_EQ(merger.staged(), 0u);
}

TEST(Merger, WatermarkGoingBackwardsReleasesNothingNew) {
    Merger merger(2);
    merger.stage(tagged(100, 0));
    merger.stage(tagged(600, 0));
    merger.stage(tagged(700, 1));
    EXPECT_EQ(timestamps(release(merger, 500)), (std::vector<std::uint64_t>{100}));

    EXPECT_TRUE(release(merger, 300).empty());
    EXPECT_EQ(merger.staged(), 2u);

    // The backwards call did not lower the bar for lateness either.
    merger.stage(tagged(450, 1));
    EXPECT_EQ(merger.late(), 1u);

    EXPECT_EQ(timestamps(release(merger, 650)), (std::vector<std::uint64_t>{450, 600}));
    EXPECT_EQ(merger.staged(), 1u);
}

TEST(Merger, ResetForgetsStagedRecordsCountersAndWatermark) {
    Merger merger(2);
    merger.stage(tagged(100, 0));
    release(merger, 1000);
    merger.stage(tagged(50, 1));   // late
    merger.stage(tagged(2000, 0));
    ASSERT_EQ(merger.late(), 1u);

    merger.reset();
    EXPECT_EQ(merger.staged(), 0u);
    EXPECT_EQ(merger.late(), 0u);
    EXPECT_EQ(merger.cpu_count(), 2u);

    // A fresh baseline: an early timestamp is neither late nor held back by the
    // old watermark.
    merger.stage(tagged(10, 1));
    EXPECT_EQ(merger.late(), 0u);
    EXPECT_EQ(timestamps(release(merger, 20)), (std::vector<std::uint64_t>{10}));
}

TEST(Merger, RecordFromAnUnknownCpuIsStillMerged) {
    Merger merger(2);
    merger.stage(tagged(20, 7, 1));
    merger.stage(tagged(10, 0, 2));
    const std::vector<Event> released = release(merger, 100);
    EXPECT_EQ(order_of(released),
              (std::vector<std::tuple<std::uint64_t, int, std::uint64_t>>{{10, 0, 2}, {20, 7, 1}}));
}

TEST(Merger, ZeroCpusMeansOneQueue) {
    Merger merger(0);
    EXPECT_EQ(merger.cpu_count(), 1u);
    merger.stage(tagged(1, 0));
    EXPECT_EQ(release(merger, 1).size(), 1u);
}

}  // namespace
}  // namespace kleak::core
