// Merger: per-CPU staging, release in (timestamp, CPU, arrival) order up to a
// watermark, and `late` accounting.
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <span>
#include <tuple>
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

// What per-CPU batching in BPF produces: a record that interrupted a kleak
// program reaches the ring ahead of the batch holding older records. Each
// batched record is put in its place at staging (near the end of the queue)
// or, further back than kInsertWindow, by a sort at release: the order out
// is the same, ties keep arrival order.
TEST(Merger, DirectRecordAheadOfItsBatchReleasesInTimeOrder) {
    for (const std::size_t batch : {std::size_t{3}, Merger::kInsertWindow + 40}) {
        Merger merger(1);
        std::vector<std::uint64_t> expected_tags;
        merger.stage(tagged(1'000'000, 0, 1));  // the direct record, newest
        std::uint64_t tag = 2;
        for (std::size_t i = 0; i < batch; ++i) merger.stage(tagged(100 + i, 0, tag++));
        merger.stage(tagged(100, 0, tag++));  // same timestamp as the batch's first: after it
        merger.stage(tagged(2'000'000, 0, tag++));
        const std::vector<Event> out = release_everything(merger);
        ASSERT_EQ(out.size(), batch + 3);
        EXPECT_TRUE(std::is_sorted(out.begin(), out.end(),
                                   [](const Event& a, const Event& b) { return a.ts_ns < b.ts_ns; }));
        EXPECT_EQ(out[0].ptr, 2u) << "batch " << batch;
        EXPECT_EQ(out[1].ptr, batch + 2) << "equal timestamps keep arrival order";
        EXPECT_EQ(out[batch + 1].ptr, 1u);
        EXPECT_EQ(merger.late(), 0u);
    }
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
    // The tracker keeps birth times to 2^20 ns, rounded up (allocation_class.h).
    EXPECT_EQ(live.at(kPtr), std::make_tuple(rounded_birth_ns(23'000), kOtherAllocSite, std::uint32_t{96}));
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

// --- sliced release ---------------------------------------------------------

using test::Prng;

// Drains of a 4-CPU stream read out of time order: each record reaches its
// ring up to `skew` ns late, rings are read in bursts, and the watermark
// trails the drain time by less than the skew, so some records are late.
struct Drain {
    std::vector<Event> staged;  // in the order they are staged
    std::uint64_t watermark;
};

std::vector<Drain> adverse_drains(std::uint64_t seed, std::size_t drains) {
    Prng rng(seed);
    constexpr unsigned kCpus = 4;
    constexpr std::uint64_t kSkew = 3000, kPeriod = 10'000, kHoldback = 1000;
    std::vector<std::vector<std::pair<std::uint64_t, Event>>> rings(kCpus);  // (visible at, event)
    std::uint64_t now = 0, tag = 0;
    for (std::size_t i = 0; i < drains * 300; ++i) {
        now += rng.below(60);  // ties happen
        const auto cpu = static_cast<std::uint16_t>(rng.below(kCpus));
        rings[cpu].emplace_back(now + rng.below(kSkew), tagged(now, cpu, ++tag));
    }
    for (auto& ring : rings)
        std::stable_sort(ring.begin(), ring.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    std::vector<Drain> out;
    std::vector<std::size_t> pos(kCpus, 0);
    for (std::size_t d = 1; d <= drains + 1; ++d) {
        const std::uint64_t at = d * kPeriod * 2;
        Drain drain{{}, at - kHoldback};
        for (unsigned cpu = 0; cpu < kCpus; ++cpu) {
            auto& ring = rings[(cpu + d) % kCpus];
            auto& p = pos[(cpu + d) % kCpus];
            while (p < ring.size() && ring[p].first <= at) drain.staged.push_back(ring[p++].second);
        }
        out.push_back(std::move(drain));
    }
    return out;
}

// One slice of at most `limit` records, appended to `out`; returns how many.
std::size_t release_slice(Merger& merger, std::size_t limit, std::vector<Event>& out) {
    std::vector<Event> slice(limit);
    const std::size_t n = merger.release_some(slice);
    out.insert(out.end(), slice.begin(), slice.begin() + static_cast<std::ptrdiff_t>(n));
    return n;
}

struct Released {
    std::vector<Event> events;
    std::uint64_t late = 0;
    std::size_t slices = 0;
};

Released one_shot(const std::vector<Drain>& drains) {
    Merger merger(4);
    Released out;
    for (const Drain& drain : drains) {
        for (const Event& e : drain.staged) merger.stage(e);
        merger.release_until(drain.watermark, out.events);
    }
    merger.release_all(out.events);
    out.late = merger.late();
    return out;
}

// Each drain's release taken `slice` records at a time; the next drain stages
// only once the release is over (what core::Pipeline guarantees).
Released sliced(const std::vector<Drain>& drains, std::size_t slice) {
    Merger merger(4);
    Released out;
    for (const Drain& drain : drains) {
        for (const Event& e : drain.staged) merger.stage(e);
        merger.begin_release(drain.watermark);
        while (merger.releasing()) {
            const std::size_t before = out.events.size();
            const std::size_t left = merger.release_left();
            release_slice(merger, slice, out.events);
            EXPECT_EQ(out.events.size() - before, std::min(slice, left));
            EXPECT_EQ(merger.releasing(), left > slice);
            ++out.slices;
        }
    }
    merger.release_all(out.events);
    out.late = merger.late();
    return out;
}

TEST(MergerSlices, SlicesAddUpToTheOneShotReleaseOnAnAdverseStream) {
    const auto drains = adverse_drains(7, 40);
    const Released reference = one_shot(drains);
    ASSERT_GT(reference.late, 20u);  // the stream really is adverse
    for (const std::size_t slice : {std::size_t{1}, std::size_t{2}, std::size_t{7}, std::size_t{100},
                                    std::size_t{100'000}}) {
        const Released got = sliced(drains, slice);
        EXPECT_EQ(order_of(got.events), order_of(reference.events)) << "slice " << slice;
        EXPECT_EQ(got.late, reference.late) << "slice " << slice;
        if (slice == 7) {
            EXPECT_GT(got.slices, drains.size() * 10);
        }
    }
}

TEST(MergerSlices, ReleaseUntilFinishesASlicedReleaseFirst) {
    Merger merger(2);
    for (std::uint64_t ts : {10, 30, 50}) merger.stage(tagged(ts, 0));
    for (std::uint64_t ts : {20, 40}) merger.stage(tagged(ts, 1));
    merger.begin_release(35);
    std::vector<Event> out;
    EXPECT_EQ(release_slice(merger, 1, out), 1u);
    EXPECT_TRUE(merger.releasing());
    EXPECT_EQ(merger.release_left(), 2u);
    merger.release_until(100, out);
    EXPECT_EQ(timestamps(out), (std::vector<std::uint64_t>{10, 20, 30, 40, 50}));
    EXPECT_FALSE(merger.releasing());
}

TEST(MergerSlices, RecordStagedMidReleaseWaitsForTheNextReleaseAndIsLateBehindItsWatermark) {
    Merger merger(2);
    merger.stage(tagged(10, 0, 1));
    merger.stage(tagged(20, 0, 2));
    merger.begin_release(100);
    std::vector<Event> out;
    release_slice(merger, 1, out);
    merger.stage(tagged(15, 1, 3));   // behind the release's watermark: late
    merger.stage(tagged(150, 1, 4));  // ahead of it
    EXPECT_EQ(merger.late(), 1u);
    EXPECT_EQ(release_slice(merger, 10, out), 1u);
    EXPECT_FALSE(merger.releasing());
    EXPECT_EQ(order_of(out), (std::vector<std::tuple<std::uint64_t, int, std::uint64_t>>{{10, 0, 1}, {20, 0, 2}}));
    merger.release_all(out);
    EXPECT_EQ(timestamps(out), (std::vector<std::uint64_t>{10, 20, 15, 150}));
}

TEST(MergerSlices, EmptyReleaseIsOverAtOnceButStillMovesTheWatermark) {
    Merger merger(1);
    merger.stage(tagged(500, 0));
    merger.begin_release(100);
    EXPECT_FALSE(merger.releasing());
    merger.stage(tagged(100, 0));
    EXPECT_EQ(merger.late(), 1u);
}

TEST(MergerSlices, ResetDiscardsAReleaseInProgress) {
    Merger merger(2);
    for (std::uint64_t ts = 1; ts <= 10; ++ts) merger.stage(tagged(ts, ts % 2));
    merger.begin_release(10);
    std::vector<Event> out;
    release_slice(merger, 3, out);
    merger.reset();
    EXPECT_FALSE(merger.releasing());
    EXPECT_EQ(merger.release_left(), 0u);
    EXPECT_EQ(merger.staged(), 0u);
    EXPECT_EQ(release_slice(merger, 100, out), 0u);
    merger.stage(tagged(5, 0));
    EXPECT_EQ(merger.late(), 0u);
    EXPECT_EQ(timestamps(release(merger, 5)), (std::vector<std::uint64_t>{5}));
}

TEST(MergerBulkStage, StagingFromOneCpuAtOnceEqualsStagingEachRecord) {
    // Out of order within the CPU, behind and at the released watermark,
    // and across two calls.
    const std::vector<Event> first = {tagged(50, 1, 1), tagged(40, 1, 2), tagged(300, 1, 3)};
    const std::vector<Event> second = {tagged(100, 1, 4), tagged(100, 1, 5), tagged(99, 1, 6), tagged(400, 1, 7)};
    Merger each(2), bulk(2);
    for (Merger* m : {&each, &bulk}) {
        m->stage(tagged(10, 0, 8));
        m->stage(tagged(60, 1, 9));
        release(*m, 100);
    }
    for (const Event& e : first) each.stage(e);
    for (const Event& e : second) each.stage(e);
    bulk.stage_from_one_cpu(first);
    bulk.stage_from_one_cpu(second);
    bulk.stage_from_one_cpu({});
    EXPECT_EQ(bulk.late(), each.late());
    EXPECT_EQ(bulk.late(), 5u);
    EXPECT_EQ(bulk.staged(), each.staged());
    EXPECT_EQ(order_of(release_everything(bulk)), order_of(release_everything(each)));
}

// --- held records: the released prefix is dropped lazily ----------------------

// Against a model with no queues at all: each release hands on, of every
// record staged and not yet handed on, those at or before the watermark, in
// (timestamp, CPU, arrival) order. The holdback keeps most records staged
// across several releases, so released records sit in front of held ones
// (cut off only once they outnumber them), and some records arrive older than
// everything held, one of them belonging exactly at the queue's front.
void expect_matches_model(unsigned cpus, std::uint64_t seed, std::uint64_t holdback) {
    Prng rng(seed);
    Merger merger(cpus);
    struct Pending {
        Event event;
        std::uint64_t arrival;
    };
    std::vector<Pending> pending;
    std::uint64_t now = 1000, arrival = 0, late = 0, released_watermark = 0;
    bool released_any = false;
    for (int round = 0; round < 300; ++round) {
        const std::size_t burst = rng.below(round % 7 == 0 ? 400 : 40);
        for (std::size_t i = 0; i < burst; ++i) {
            now += rng.below(20);
            const auto cpu = static_cast<std::uint16_t>(rng.below(cpus));
            std::uint64_t ts = now;
            if (rng.percent(10)) ts = now - std::min(now, rng.below(2 * holdback));  // old, even late
            const Event e = tagged(ts, cpu, ++arrival);
            if (released_any && ts <= released_watermark) ++late;
            merger.stage(e);
            pending.push_back({e, arrival});
        }
        const std::uint64_t watermark = now > holdback ? now - holdback : 0;
        std::vector<Event> got;
        merger.release_until(watermark, got);
        if (!released_any || watermark > released_watermark) released_watermark = watermark;
        released_any = true;

        std::vector<Pending> due;
        std::vector<Pending> kept;
        for (const Pending& p : pending) (p.event.ts_ns <= released_watermark ? due : kept).push_back(p);
        std::sort(due.begin(), due.end(), [](const Pending& a, const Pending& b) {
            return std::tuple(a.event.ts_ns, a.event.cpu, a.arrival) < std::tuple(b.event.ts_ns, b.event.cpu, b.arrival);
        });
        std::vector<Event> expected;
        for (const Pending& p : due) expected.push_back(p.event);
        pending = std::move(kept);
        ASSERT_EQ(order_of(got), order_of(expected)) << "round " << round;
        ASSERT_EQ(merger.staged(), pending.size()) << "round " << round;
        ASSERT_EQ(merger.late(), late) << "round " << round;
    }
    std::vector<Event> rest;
    merger.release_all(rest);
    EXPECT_EQ(rest.size(), pending.size());
    EXPECT_EQ(merger.staged(), 0u);
}

TEST(MergerHeld, LongHoldbackMatchesTheModelOnTwoCpus) { expect_matches_model(2, 11, 2000); }
// More held than Merger::kInsertWindow: old records make the queue sort.
TEST(MergerHeld, LongerHoldbackMatchesTheModelOnFiveCpus) { expect_matches_model(5, 12, 20000); }
TEST(MergerHeld, ShortHoldbackMatchesTheModel) { expect_matches_model(3, 13, 50); }

TEST(MergerHeld, ReleasedRecordsDoNotPileUpInFrontOfHeldOnes) {
    // Each release hands on a tenth of what is staged and holds the rest:
    // the released records are cut off once they outnumber the held ones,
    // so the queue never holds much more than twice what is staged.
    Merger merger(1);
    std::uint64_t ts = 0;
    std::size_t most = 0;
    for (int drain = 0; drain < 2000; ++drain) {
        for (int i = 0; i < 1000; ++i) merger.stage(tagged(++ts, 0));
        most = std::max(most, merger.staged_capacity());
        release(merger, ts > 9'000 ? ts - 9'000 : 0);
    }
    EXPECT_EQ(merger.staged(), 9'000u);
    EXPECT_LE(most, 4 * 10'000u);
}

TEST(MergerHeld, RecordOlderThanEveryHeldOneGoesToTheFrontAfterAPartialRelease) {
    Merger merger(1);
    for (std::uint64_t ts = 1; ts <= 10; ++ts) merger.stage(tagged(ts * 10, 0, ts));
    EXPECT_EQ(timestamps(release(merger, 30)), (std::vector<std::uint64_t>{10, 20, 30}));
    merger.stage(tagged(35, 0, 99));  // before every held record (40..100), after every released one
    merger.stage(tagged(5, 0, 98));   // late
    EXPECT_EQ(merger.late(), 1u);
    EXPECT_EQ(merger.staged(), 9u);
    EXPECT_EQ(timestamps(release(merger, 60)), (std::vector<std::uint64_t>{5, 35, 40, 50, 60}));
    EXPECT_EQ(timestamps(release_everything(merger)), (std::vector<std::uint64_t>{70, 80, 90, 100}));
}

// --- staging memory (bench/PROPOSALS.md P6) -----------------------------------

TEST(MergerShrink, BurstCapacityIsReturnedAfterQuietReleases) {
    Merger merger(2);
    constexpr std::size_t kBurst = 200'000;
    std::uint64_t ts = 0;
    for (std::size_t i = 0; i < kBurst; ++i) merger.stage(tagged(++ts, static_cast<std::uint16_t>(i % 2)));
    release(merger, ts);
    const std::size_t after_burst = merger.staged_capacity();
    EXPECT_GE(after_burst, kBurst);  // not at once: the next second may be as busy

    // Quiet drains: a hundred records each. Most of the memory comes back
    // within about ten of them, all but the floor within a few dozen.
    std::size_t releases = 0;
    std::size_t after_twelve = 0;
    while (merger.staged_capacity() > 2 * Merger::kMinShrinkCapacity && releases < 100) {
        for (int i = 0; i < 100; ++i) merger.stage(tagged(++ts, static_cast<std::uint16_t>(i % 2)));
        release(merger, ts - 10);  // keeps a few staged
        if (++releases == 12) after_twelve = merger.staged_capacity();
    }
    EXPECT_LE(merger.staged_capacity(), 2 * Merger::kMinShrinkCapacity);
    EXPECT_LE(after_twelve, after_burst / 2);
    EXPECT_LE(releases, 60u);
    EXPECT_GE(releases, 5u);  // not on the first quiet release

    // Shrinking kept what was staged, in order.
    merger.stage(tagged(ts + 1, 0));
    std::vector<Event> rest = release_everything(merger);
    ASSERT_FALSE(rest.empty());
    for (std::size_t i = 1; i < rest.size(); ++i) EXPECT_LT(rest[i - 1].ts_ns, rest[i].ts_ns);
    EXPECT_EQ(rest.back().ts_ns, ts + 1);
}

TEST(MergerShrink, SteadyRateKeepsItsCapacity) {
    // The same load every drain must not reallocate every drain.
    Merger merger(1);
    std::uint64_t ts = 0;
    std::size_t lowest = std::numeric_limits<std::size_t>::max();
    for (int drain = 0; drain < 50; ++drain) {
        for (int i = 0; i < 50'000; ++i) merger.stage(tagged(++ts, 0));
        release(merger, ts - 5'000);  // a holdback keeps a tenth staged
        if (drain > 0) lowest = std::min(lowest, merger.staged_capacity());
    }
    EXPECT_GE(lowest, 50'000u);
}

TEST(MergerShrink, ResetReturnsStagingMemory) {
    Merger merger(1);
    for (std::uint64_t ts = 1; ts <= 100'000; ++ts) merger.stage(tagged(ts, 0));
    merger.reset();
    EXPECT_LE(merger.staged_capacity(), Merger::kMinShrinkCapacity);
}

}  // namespace
}  // namespace kleak::core
