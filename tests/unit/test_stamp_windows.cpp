// Frees stamped late (ABI 2): StampWindows gives a free that read no clock
// (KLEAK_TS_LOWER_BOUND) its CPU's next reading and a window, and
// core::Pipeline, fed raw ABI records, tracks a remote free that sorted after
// a reallocation of its pointer as the free of the allocation it really ended.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "core/allocation_class.h"
#include "core/event.h"
#include "core/frame_order.h"
#include "core/pipeline.h"
#include "core/recording_frames.h"
#include "core/stamp_windows.h"
#include "test_helpers.h"

namespace kleak::core {
namespace {

using test::alloc_event;
using test::event_fields;
using test::free_event;

constexpr std::uint64_t kP = 0xffff888000010000;
constexpr std::uint64_t kQ = 0xffff888000020000;
constexpr std::uint64_t kR = 0xffff888000030000;
constexpr std::uint64_t kAllocFirst = 0xffffffff81a00010;
constexpr std::uint64_t kAllocAgain = 0xffffffff81b00020;
constexpr std::uint64_t kAllocOther = 0xffffffff81c00030;
constexpr std::uint64_t kFreeSite = 0xffffffff81f00040;

constexpr std::uint16_t kLowerBound = KLEAK_TS_LOWER_BOUND;

Event mark_event(std::uint64_t ts, std::uint16_t cpu) {
    Event e;
    e.ts_ns = ts;
    e.cpu = cpu;
    e.kind = EventKind::time_mark;
    return e;
}

// What take() hands on for `event`, in order.
std::vector<Event> take(StampWindows& windows, const Event& event) {
    std::vector<Event> out;
    windows.take(event, [&](const Event& e) { out.push_back(e); });
    return out;
}

std::vector<Event> close_all(StampWindows& windows) {
    std::vector<Event> out;
    windows.close_all([&](const Event& e) { out.push_back(e); });
    return out;
}

// `free` as it must come out once its window is closed by a reading at `at`.
Event stamped(Event free, std::uint64_t at) {
    free.bytes_req = static_cast<std::uint32_t>(at - free.ts_ns);
    free.ts_ns = at;
    return free;
}

using Fields = decltype(event_fields(Event{}));

std::vector<Fields> fields_of(const std::vector<Event>& events) {
    std::vector<Fields> out;
    for (const Event& e : events) out.push_back(event_fields(e));
    return out;
}

// --- StampWindows on its own --------------------------------------------------

TEST(StampWindows, RecordsWithTheirOwnReadingPassStraightThrough) {
    StampWindows windows(2);
    const Event alloc = alloc_event({.ts = 100, .ptr = kP, .site = kAllocFirst, .req = 8, .alloc = 8});
    const Event exact_free = free_event({.ts = 120, .ptr = kP, .site = kFreeSite});
    EXPECT_EQ(fields_of(take(windows, alloc)), fields_of({alloc}));
    EXPECT_EQ(fields_of(take(windows, exact_free)), fields_of({exact_free}));
    EXPECT_EQ(windows.waiting(), 0u);
}

TEST(StampWindows, FlaggedFreeTakesTheNextAllocationsReadingAndTheDifferenceAsItsWindow) {
    StampWindows windows(1);
    const Event free = free_event({.ts = 100, .ptr = kP, .site = kFreeSite, .tgid = 7, .flags = kLowerBound});
    EXPECT_TRUE(take(windows, free).empty()) << "a free with only a lower bound waits";
    EXPECT_EQ(windows.waiting(), 1u);

    const Event alloc = alloc_event({.ts = 180, .ptr = kQ, .site = kAllocFirst, .req = 8, .alloc = 8});
    const std::vector<Event> out = take(windows, alloc);
    ASSERT_EQ(out.size(), 2u);
    // The free first (it came first on its CPU), at the allocation's reading,
    // every other field, its flags included, as decoded.
    Event expected = free;
    expected.ts_ns = 180;
    expected.bytes_req = 80;
    EXPECT_EQ(event_fields(out[0]), event_fields(expected));
    EXPECT_EQ(earliest_free_ns(out[0]), 100u);
    EXPECT_EQ(event_fields(out[1]), event_fields(alloc));
    EXPECT_EQ(windows.waiting(), 0u);
}

TEST(StampWindows, SeveralFreesAreClosedByTheTimeMarkWhichIsNotHandedOn) {
    StampWindows windows(1);
    // A run of frees after the reading at 100: none read the clock.
    const std::vector<Event> frees = {
        free_event({.ts = 100, .ptr = kP, .site = kFreeSite, .flags = kLowerBound}),
        free_event({.ts = 100, .ptr = kQ, .site = kFreeSite, .kind = EventKind::cache_free, .flags = kLowerBound}),
        free_event({.ts = 100, .ptr = kR, .site = kFreeSite + 8, .flags = kLowerBound}),
    };
    for (const Event& f : frees) EXPECT_TRUE(take(windows, f).empty());
    EXPECT_EQ(windows.waiting(), 3u);

    EXPECT_EQ(fields_of(take(windows, mark_event(400, 0))),
              fields_of({stamped(frees[0], 400), stamped(frees[1], 400), stamped(frees[2], 400)}));
    EXPECT_EQ(windows.waiting(), 0u);
    // A mark with nothing waiting hands on nothing at all.
    EXPECT_TRUE(take(windows, mark_event(500, 0)).empty());
}

TEST(StampWindows, AReadingOnAnotherCpuDoesNotCloseTheWindow) {
    StampWindows windows(2);
    const Event free_on_cpu0 = free_event({.ts = 100, .cpu = 0, .ptr = kP, .site = kFreeSite, .flags = kLowerBound});
    EXPECT_TRUE(take(windows, free_on_cpu0).empty());

    // CPU1's mark and allocation say nothing about when CPU0's free ran.
    EXPECT_TRUE(take(windows, mark_event(500, 1)).empty());
    const Event alloc_on_cpu1 = alloc_event({.ts = 600, .cpu = 1, .ptr = kQ, .site = kAllocFirst, .req = 8, .alloc = 8});
    EXPECT_EQ(fields_of(take(windows, alloc_on_cpu1)), fields_of({alloc_on_cpu1}));
    EXPECT_EQ(windows.waiting(), 1u);

    EXPECT_EQ(fields_of(take(windows, mark_event(300, 0))), fields_of({stamped(free_on_cpu0, 300)}));
    EXPECT_EQ(windows.waiting(), 0u);
}

TEST(StampWindows, FlaggedFreesOnTwoCpusWaitApart) {
    StampWindows windows(2);
    const Event on_cpu0 = free_event({.ts = 100, .cpu = 0, .ptr = kP, .site = kFreeSite, .flags = kLowerBound});
    const Event on_cpu1 = free_event({.ts = 150, .cpu = 1, .ptr = kQ, .site = kFreeSite, .flags = kLowerBound});
    take(windows, on_cpu0);
    take(windows, on_cpu1);
    EXPECT_EQ(fields_of(take(windows, mark_event(700, 1))), fields_of({stamped(on_cpu1, 700)}));
    EXPECT_EQ(fields_of(take(windows, mark_event(200, 0))), fields_of({stamped(on_cpu0, 200)}));
}

TEST(StampWindows, AFreeThatReadTheClockClosesTheWaitingOnes) {
    // Every KLEAK_FREES_PER_STAMP-th free of a run reads the clock.
    StampWindows windows(1);
    const Event flagged = free_event({.ts = 100, .ptr = kP, .site = kFreeSite, .flags = kLowerBound});
    const Event exact = free_event({.ts = 250, .ptr = kQ, .site = kFreeSite});
    take(windows, flagged);
    const std::vector<Event> out = take(windows, exact);
    EXPECT_EQ(fields_of(out), fields_of({stamped(flagged, 250), exact}));
    EXPECT_EQ(out[1].bytes_req, 0u) << "a free that read the clock has no window";
}

TEST(StampWindows, APrintkClosesTheWaitingOnes) {
    StampWindows windows(1);
    const Event flagged = free_event({.ts = 100, .ptr = kP, .site = kFreeSite, .flags = kLowerBound});
    Event printk;
    printk.ts_ns = 260;
    printk.kind = EventKind::printk;
    printk.bytes_req = 5;  // its text length
    take(windows, flagged);
    EXPECT_EQ(fields_of(take(windows, printk)), fields_of({stamped(flagged, 260), printk}));
}

TEST(StampWindows, AnAllocationIsNeverHeldWhateverItsGfpFlags) {
    // 0x2 is also __GFP_HIGHMEM: only a free's flags mean KLEAK_TS_LOWER_BOUND.
    StampWindows windows(1);
    const Event alloc = alloc_event({.ts = 100, .ptr = kP, .site = kAllocFirst, .req = 8, .alloc = 8, .gfp = 0x2});
    EXPECT_EQ(fields_of(take(windows, alloc)), fields_of({alloc}));
    EXPECT_EQ(windows.waiting(), 0u);
}

TEST(StampWindows, CloseAllHandsOnWaitingFreesUnchanged) {
    // End of input: a batch cut short never got its mark; its frees go on at
    // their lower bound, window 0.
    StampWindows windows(2);
    const std::vector<Event> frees = {
        free_event({.ts = 100, .cpu = 0, .ptr = kP, .site = kFreeSite, .flags = kLowerBound}),
        free_event({.ts = 100, .cpu = 0, .ptr = kQ, .site = kFreeSite, .flags = kLowerBound}),
        free_event({.ts = 120, .cpu = 1, .ptr = kR, .site = kFreeSite, .flags = kLowerBound}),
    };
    for (const Event& f : frees) take(windows, f);
    EXPECT_EQ(fields_of(close_all(windows)), fields_of(frees));
    EXPECT_EQ(windows.waiting(), 0u);
    EXPECT_TRUE(take(windows, mark_event(900, 0)).empty()) << "nothing is left to close";
    EXPECT_TRUE(close_all(windows).empty());
}

TEST(StampWindows, AReadingOlderThanTheLowerBoundLeavesTheFreeAtItsLowerBound) {
    // Only damaged input has it: the free keeps its own time, window 0,
    // rather than sorting before the reading it was stamped with.
    StampWindows windows(1);
    const Event flagged = free_event({.ts = 500, .ptr = kP, .site = kFreeSite, .flags = kLowerBound});
    const Event older = alloc_event({.ts = 400, .ptr = kQ, .site = kAllocFirst, .req = 8, .alloc = 8});
    take(windows, flagged);
    EXPECT_EQ(fields_of(take(windows, older)), fields_of({flagged, older}));

    // The same reading as the lower bound: an empty window.
    take(windows, flagged);
    EXPECT_EQ(fields_of(take(windows, mark_event(500, 0))), fields_of({flagged}));
}

TEST(StampWindows, AWindowTooLongForBytesReqIsUnbounded) {
    StampWindows windows(1);
    constexpr std::uint64_t kLongest = std::uint64_t{kUnboundedWindow} - 1;  // 64-bit: no u32 wrap below
    const Event flagged = free_event({.ts = 100, .ptr = kP, .site = kFreeSite, .flags = kLowerBound});

    // The longest window bytes_req holds exactly...
    take(windows, flagged);
    std::vector<Event> out = take(windows, mark_event(100 + kLongest, 0));
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].ts_ns, 100 + kLongest);
    EXPECT_EQ(out[0].bytes_req, kLongest);
    EXPECT_EQ(earliest_free_ns(out[0]), 100u);

    // ... one more ns and it is unbounded: the free may have run any time before.
    take(windows, flagged);
    out = take(windows, mark_event(100 + kLongest + 1, 0));
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].bytes_req, kUnboundedWindow);
    EXPECT_EQ(earliest_free_ns(out[0]), 0u);

    // A reading more than 2^32 ns after the lower bound (a batch whose mark
    // was lost, closed by a later one): stamped at the reading, unbounded,
    // not a window cut short that would claim a lower bound it does not know.
    take(windows, flagged);
    const std::uint64_t reading = 100 + (std::uint64_t{1} << 32) + 5;
    out = take(windows, mark_event(reading, 0));
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].ts_ns, reading);
    EXPECT_EQ(out[0].bytes_req, kUnboundedWindow);
    EXPECT_EQ(earliest_free_ns(out[0]), 0u);

    // close_window on its own, far past 2^32 ns.
    Event free = flagged;
    StampWindows::close_window(free, std::uint64_t{7} << 40);
    EXPECT_EQ(free.ts_ns, std::uint64_t{7} << 40);
    EXPECT_EQ(free.bytes_req, kUnboundedWindow);
    EXPECT_EQ(earliest_free_ns(free), 0u);
}

TEST(StampWindows, ACpuBeyondTheCountSharesTheLastCpusWindow) {
    StampWindows windows(2);
    const Event flagged = free_event({.ts = 100, .cpu = 9, .ptr = kP, .site = kFreeSite, .flags = kLowerBound});
    take(windows, flagged);
    EXPECT_TRUE(take(windows, mark_event(200, 0)).empty());
    EXPECT_EQ(fields_of(take(windows, mark_event(300, 1))), fields_of({stamped(flagged, 300)}));
}

TEST(StampWindows, ClearForgetsWaitingFrees) {
    StampWindows windows(1);
    take(windows, free_event({.ts = 100, .ptr = kP, .site = kFreeSite, .flags = kLowerBound}));
    windows.clear();
    EXPECT_EQ(windows.waiting(), 0u);
    EXPECT_TRUE(take(windows, mark_event(200, 0)).empty());
}

// --- through core::Pipeline, from raw ABI records --------------------------------

// Records one CPU delivered together (one ring sample: a batch), in order.
struct Delivery {
    unsigned cpu;
    std::vector<std::vector<std::byte>> records;
};

enum class Feed { record_by_record, frames };

const char* feed_name(Feed feed) { return feed == Feed::frames ? "on_frames" : "on_record"; }

// Live tracing calls on_record per record, replay on_frames per run of one
// CPU's frames: both must stamp frees the same way. Ends with finish().
std::unique_ptr<Pipeline> run(unsigned cpus, const std::vector<Delivery>& deliveries, Feed feed) {
    auto pipeline = std::make_unique<Pipeline>(cpus);
    for (const Delivery& d : deliveries) {
        if (feed == Feed::record_by_record) {
            for (const auto& record : d.records) pipeline->on_record(d.cpu, record);
            continue;
        }
        std::vector<std::byte> frames;
        for (const auto& record : d.records) append_frame(frames, record);
        FrameReader reader(frames);
        EXPECT_EQ(pipeline->on_frames(d.cpu, reader), FrameStatus::need_more);
    }
    pipeline->finish();
    return pipeline;
}

std::vector<std::byte> alloc_bytes(std::uint64_t ts, std::uint16_t cpu, std::uint64_t ptr, std::uint64_t site,
                                   std::uint32_t bytes) {
    return test::encode_event(alloc_event({.ts = ts, .cpu = cpu, .ptr = ptr, .site = site, .req = bytes, .alloc = bytes}));
}

std::vector<std::byte> flagged_free_bytes(std::uint64_t lower_bound, std::uint16_t cpu, std::uint64_t ptr) {
    return test::encode_event(free_event({.ts = lower_bound, .cpu = cpu, .ptr = ptr, .site = kFreeSite, .flags = kLowerBound}));
}

TEST(StampedFrees, RemoteFreeSortedAfterAReallocationFreesTheAllocationItEnded) {
    // True order: CPU0 allocates P at 100; CPU1 (last reading 90) frees it
    // at ~200 without reading the clock; CPU0 gets P back at 250; CPU1's
    // batch closes with a mark at 400. The free is stamped 400 (window
    // 90..400), so it sorts after the reallocation: the tracker must give it
    // to the first allocation, leaving the reallocation outstanding.
    const std::vector<Delivery> deliveries = {
        {0, {alloc_bytes(100, 0, kP, kAllocFirst, 64)}},
        {1, {alloc_bytes(90, 1, kQ, kAllocOther, 32), flagged_free_bytes(90, 1, kP), test::time_mark_record(400)}},
        {0, {alloc_bytes(250, 0, kP, kAllocAgain, 128)}},
    };
    for (Feed feed : {Feed::record_by_record, Feed::frames}) {
        SCOPED_TRACE(feed_name(feed));
        const auto pipeline = run(2, deliveries, feed);
        EXPECT_EQ(pipeline->records(), 4u) << "the mark is not a record";
        EXPECT_EQ(pipeline->undecodable(), 0u);
        EXPECT_EQ(pipeline->late(), 0u);
        EXPECT_EQ(pipeline->newest_ts(1), 400u) << "the free was staged at the mark's reading";

        const Tracker& tracker = pipeline->tracker();
        EXPECT_EQ(tracker.totals().frees, 1u);
        EXPECT_EQ(tracker.totals().reordered_frees, 1u);
        EXPECT_EQ(tracker.totals().unmatched_frees, 0u);
        EXPECT_EQ(tracker.totals().replaced, 0u);
        EXPECT_EQ(tracker.displaced_count(), 0u);
        EXPECT_EQ(test::site_of(tracker, kAllocFirst).frees, 1u);
        EXPECT_EQ(test::site_of(tracker, kAllocFirst).bytes_freed, 64u);
        EXPECT_EQ(test::site_of(tracker, kAllocAgain).outstanding, 1u);
        // Exactly one P outstanding: the reallocation.
        EXPECT_EQ(test::outstanding_entries(tracker),
                  (std::vector<test::OutstandingEntry>{{kP, rounded_birth_ns(250), kAllocAgain, 128},
                                                       {kQ, rounded_birth_ns(90), kAllocOther, 32}}));

        pipeline->settle();
        EXPECT_EQ(tracker.totals().replaced, 0u) << "nothing was left displaced to expire";
        EXPECT_EQ(tracker.totals().outstanding, 2u);
    }
}

TEST(StampedFrees, RemoteFreeOfAFreshAllocationSortsAfterIt) {
    // The common case the late stamp is for: CPU1's lower bound (90) is
    // before CPU0's allocation (100) of what it frees. Staged at its lower
    // bound the free would sort first and match nothing; stamped at CPU1's
    // mark (400) it frees the allocation, with no repair needed.
    const std::vector<Delivery> deliveries = {
        {1, {flagged_free_bytes(90, 1, kP), test::time_mark_record(400)}},
        {0, {alloc_bytes(100, 0, kP, kAllocFirst, 64), alloc_bytes(500, 0, kP, kAllocAgain, 128)}},
    };
    for (Feed feed : {Feed::record_by_record, Feed::frames}) {
        SCOPED_TRACE(feed_name(feed));
        const auto pipeline = run(2, deliveries, feed);
        pipeline->settle();
        const Tracker& tracker = pipeline->tracker();
        EXPECT_EQ(tracker.totals().frees, 1u);
        EXPECT_EQ(tracker.totals().unmatched_frees, 0u);
        EXPECT_EQ(tracker.totals().reordered_frees, 0u);
        EXPECT_EQ(tracker.totals().replaced, 0u);
        EXPECT_EQ(test::site_of(tracker, kAllocFirst).frees, 1u);
        EXPECT_EQ(test::outstanding_entries(tracker),
                  (std::vector<test::OutstandingEntry>{{kP, rounded_birth_ns(500), kAllocAgain, 128}}));
    }
}

TEST(StampedFrees, FreeSurelyAfterTheReallocationFreesTheReallocation) {
    // P's first free was lost; CPU0 allocates P again at 250. CPU1's free of
    // P cannot have run before 300 (its lower bound), so it ends the
    // reallocation; the first allocation stays displaced until the end of
    // input and is then counted replaced, as before ABI 2.
    const std::vector<Delivery> deliveries = {
        {0, {alloc_bytes(100, 0, kP, kAllocFirst, 64), alloc_bytes(250, 0, kP, kAllocAgain, 128)}},
        {1, {alloc_bytes(300, 1, kQ, kAllocOther, 32), flagged_free_bytes(300, 1, kP), test::time_mark_record(400)}},
    };
    for (Feed feed : {Feed::record_by_record, Feed::frames}) {
        SCOPED_TRACE(feed_name(feed));
        const auto pipeline = run(2, deliveries, feed);
        const Tracker& tracker = pipeline->tracker();
        EXPECT_EQ(tracker.totals().frees, 1u);
        EXPECT_EQ(tracker.totals().reordered_frees, 0u);
        EXPECT_EQ(test::site_of(tracker, kAllocAgain).frees, 1u);
        EXPECT_EQ(tracker.displaced_count(), 1u);
        EXPECT_EQ(tracker.totals().replaced, 0u) << "not before the end of input";

        pipeline->settle();
        EXPECT_EQ(tracker.displaced_count(), 0u);
        EXPECT_EQ(tracker.totals().replaced, 1u);
        EXPECT_EQ(test::site_of(tracker, kAllocFirst).replaced, 1u);
        EXPECT_EQ(test::site_of(tracker, kAllocFirst).replaced_bytes, 64u);
        EXPECT_EQ(test::outstanding_entries(tracker),
                  (std::vector<test::OutstandingEntry>{{kQ, rounded_birth_ns(300), kAllocOther, 32}}));
    }
}

// One CPU's records as `kleakd record` writes them: framed, then sorted
// (sort_frames_by_time, once per drain), and read back.
std::vector<std::vector<std::byte>> as_recorded(const std::vector<std::vector<std::byte>>& arrival) {
    std::vector<std::byte> frames;
    for (const auto& record : arrival) append_frame(frames, record);
    sort_frames_by_time(frames);
    std::vector<std::vector<std::byte>> out;
    FrameReader reader(frames);
    std::span<const std::byte> record;
    while (reader.next(record) == FrameStatus::ok) out.emplace_back(record.begin(), record.end());
    return out;
}

TEST(StampedFrees, ARecordedDrainWithADirectRecordAheadOfItsBatchReplaysAsItWasTracedLive) {
    // CPU1's drain, in arrival order: D, a kmalloc from an interrupt (12),
    // went to the ring directly, ahead of the batch it interrupted: an
    // allocation of X at 10, frees of X and P that read no clock (lower
    // bound 10), and an allocation at 20 that closes their window. CPU0
    // allocated P at 13: CPU1's free of P ran between 13 and 20.
    constexpr std::uint64_t kD = 0xffff888000040000;
    constexpr std::uint64_t kX = 0xffff888000050000;
    const std::vector<std::vector<std::byte>> cpu1_arrival = {
        alloc_bytes(12, 1, kD, kAllocOther, 16),
        alloc_bytes(10, 1, kX, kAllocFirst, 32),
        test::encode_event(free_event({.ts = 10, .cpu = 1, .ptr = kX, .site = kFreeSite, .kind = EventKind::cache_free,
                                       .flags = kLowerBound})),
        flagged_free_bytes(10, 1, kP),
        alloc_bytes(20, 1, kR, kAllocOther, 64),
    };
    const Delivery cpu0 = {0, {alloc_bytes(13, 0, kP, kAllocAgain, 128)}};

    const auto expect_p_freed = [&](const Pipeline& pipeline) {
        const Tracker& tracker = pipeline.tracker();
        EXPECT_EQ(pipeline.records(), 6u);
        EXPECT_EQ(pipeline.late(), 0u);
        EXPECT_EQ(tracker.totals().frees, 2u);
        EXPECT_EQ(tracker.totals().unmatched_frees, 0u);
        EXPECT_EQ(tracker.totals().reordered_frees, 0u);
        EXPECT_EQ(tracker.totals().replaced, 0u);
        EXPECT_EQ(test::site_of(tracker, kAllocAgain).frees, 1u) << "P was freed after CPU0 allocated it";
        EXPECT_EQ(test::site_of(tracker, kAllocFirst).frees, 1u);
        // D and the allocation at 20 are left; P is not outstanding.
        EXPECT_EQ(test::outstanding_entries(tracker),
                  (std::vector<test::OutstandingEntry>{{kR, rounded_birth_ns(20), kAllocOther, 64},
                                                       {kD, rounded_birth_ns(12), kAllocOther, 16}}));
    };

    // Replay of the recording, either feed.
    const std::vector<Delivery> recorded = {{1, as_recorded(cpu1_arrival)}, cpu0};
    for (Feed feed : {Feed::record_by_record, Feed::frames}) {
        SCOPED_TRACE(feed_name(feed));
        const auto pipeline = run(2, recorded, feed);
        pipeline->settle();
        expect_p_freed(*pipeline);
    }
    // Live tracing, which sees the arrival order: the same.
    {
        SCOPED_TRACE("live");
        const auto pipeline = run(2, {{1, cpu1_arrival}, cpu0}, Feed::record_by_record);
        pipeline->settle();
        expect_p_freed(*pipeline);
    }
    // Sorted by the stamps alone (D after the frees, closing their window at
    // 12), the free of P would have sorted before CPU0's allocation at 13.
    {
        SCOPED_TRACE("sorted by stamps alone");
        const std::vector<std::vector<std::byte>> by_stamps = {cpu1_arrival[1], cpu1_arrival[2], cpu1_arrival[3],
                                                               cpu1_arrival[0], cpu1_arrival[4]};
        const auto pipeline = run(2, {{1, by_stamps}, cpu0}, Feed::frames);
        pipeline->settle();
        EXPECT_EQ(pipeline->tracker().totals().unmatched_frees, 1u);
        EXPECT_EQ(test::site_of(pipeline->tracker(), kAllocAgain).outstanding, 1u);
    }
}

TEST(StampedFrees, AWaitingFreeIsNeitherStagedNorReleasedBeforeItsWindowCloses) {
    Pipeline pipeline(2);
    pipeline.on_record(0, alloc_bytes(100, 0, kP, kAllocFirst, 64));
    pipeline.on_record(1, flagged_free_bytes(90, 1, kP));
    EXPECT_EQ(pipeline.records(), 2u);
    EXPECT_EQ(pipeline.staged(), 1u) << "the free waits for CPU1's next reading";
    EXPECT_EQ(pipeline.newest_ts(1), 0u);

    // A release meanwhile leaves it waiting: it is not late when it comes.
    pipeline.release_until(300);
    EXPECT_EQ(pipeline.tracker().totals().outstanding, 1u);
    pipeline.on_record(1, test::time_mark_record(400));
    EXPECT_EQ(pipeline.records(), 2u);
    EXPECT_EQ(pipeline.staged(), 1u);
    pipeline.release_until(400);
    EXPECT_EQ(pipeline.late(), 0u);
    EXPECT_EQ(pipeline.tracker().totals().frees, 1u);
    EXPECT_EQ(pipeline.tracker().totals().outstanding, 0u);
}

TEST(StampedFrees, FinishStagesFreesStillWaitingAtTheirLowerBound) {
    // A batch cut short (its mark never came): the free is still tracked.
    Pipeline pipeline(2);
    pipeline.on_record(1, alloc_bytes(100, 1, kP, kAllocFirst, 64));
    pipeline.on_record(1, flagged_free_bytes(100, 1, kP));
    EXPECT_EQ(pipeline.staged(), 1u);
    pipeline.finish();
    EXPECT_EQ(pipeline.staged(), 0u);
    EXPECT_EQ(pipeline.newest_ts(1), 100u);
    EXPECT_EQ(pipeline.tracker().totals().frees, 1u);
    EXPECT_EQ(pipeline.tracker().totals().outstanding, 0u);
}

TEST(StampedFrees, TimeMarksAreNeitherRecordsNorStaged) {
    Pipeline pipeline(1);
    pipeline.on_record(0, test::time_mark_record(50));
    EXPECT_EQ(pipeline.records(), 0u);
    EXPECT_EQ(pipeline.undecodable(), 0u);
    EXPECT_EQ(pipeline.staged(), 0u);
    const std::vector<std::byte> mark = test::time_mark_record(60);
    pipeline.on_record(0, std::span(mark).first(10));  // cut short
    EXPECT_EQ(pipeline.undecodable(), 1u);
    pipeline.finish();
    EXPECT_TRUE(pipeline.tracker().sites().empty());
}

TEST(StampedFrees, ResetForgetsWaitingFrees) {
    Pipeline pipeline(1);
    pipeline.on_record(0, flagged_free_bytes(100, 0, kP));
    pipeline.reset();
    pipeline.on_record(0, test::time_mark_record(200));
    EXPECT_EQ(pipeline.staged(), 0u);
    pipeline.finish();
    EXPECT_EQ(pipeline.tracker().totals().unmatched_frees, 0u) << "the free from before the reset came back";
    EXPECT_TRUE(pipeline.tracker().sites().empty());
}

}  // namespace
}  // namespace kleak::core
