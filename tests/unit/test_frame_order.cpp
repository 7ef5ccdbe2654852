// sort_frames_by_time: what `kleakd record` does to each drain's frames of a
// CPU so that replay needs no more holdback than live tracing.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "core/frame_order.h"
#include "core/recording_frames.h"
#include "test_helpers.h"

namespace kleak::core {
namespace {

// A 16-byte record: timestamp, then a tag to tell equal timestamps apart.
std::vector<std::byte> record(std::uint64_t ts, std::uint64_t tag) {
    std::vector<std::byte> r(16);
    std::memcpy(r.data(), &ts, 8);
    std::memcpy(r.data() + 8, &tag, 8);
    return r;
}

std::vector<std::byte> frames_of(const std::vector<std::vector<std::byte>>& records) {
    std::vector<std::byte> out;
    for (const auto& r : records) append_frame(out, r);
    return out;
}

std::vector<std::uint64_t> tags(const std::vector<std::byte>& frames) {
    std::vector<std::uint64_t> out;
    FrameReader reader(frames);
    std::span<const std::byte> r;
    while (reader.next(r) == FrameStatus::ok) {
        std::uint64_t tag = 0;
        if (r.size() >= 16) std::memcpy(&tag, r.data() + 8, 8);
        out.push_back(tag);
    }
    return out;
}

TEST(FrameOrder, ADirectRecordAheadOfItsBatchMovesBehindIt) {
    // The direct record (ts 900) reached the ring before the batch (100-300).
    auto frames = frames_of({record(50, 1), record(900, 2), record(100, 3), record(200, 4), record(300, 5)});
    const std::size_t size = frames.size();
    sort_frames_by_time(frames);
    EXPECT_EQ(frames.size(), size);
    EXPECT_EQ(tags(frames), (std::vector<std::uint64_t>{1, 3, 4, 5, 2}));
}

TEST(FrameOrder, EqualTimestampsKeepArrivalOrder) {
    auto frames = frames_of({record(500, 1), record(100, 2), record(100, 3), record(100, 4)});
    sort_frames_by_time(frames);
    EXPECT_EQ(tags(frames), (std::vector<std::uint64_t>{2, 3, 4, 1}));
}

TEST(FrameOrder, InOrderShortAndTruncatedBuffersAreLeftAlone) {
    auto in_order = frames_of({record(1, 1), record(2, 2)});
    const auto copy = in_order;
    sort_frames_by_time(in_order);
    EXPECT_EQ(in_order, copy);

    // A frame too short for a timestamp sorts as time 0: first.
    std::vector<std::byte> frames = frames_of({record(7, 1)});
    append_frame(frames, std::vector<std::byte>(4));
    sort_frames_by_time(frames);
    EXPECT_EQ(tags(frames), (std::vector<std::uint64_t>{0, 1}));

    // A buffer that ends mid-frame is not touched.
    auto truncated = frames_of({record(9, 1), record(3, 2)});
    truncated.pop_back();
    const auto before = truncated;
    sort_frames_by_time(truncated);
    EXPECT_EQ(truncated, before);
}

// --- frees stamped late (KLEAK_TS_LOWER_BOUND) ----------------------------------

constexpr std::uint64_t kSite = 0xffffffff81a00010;

// Real ABI records, told apart by their pointer.
std::vector<std::byte> kmalloc_at(std::uint64_t ts, std::uint64_t ptr) {
    return test::encode_event(test::alloc_event({.ts = ts, .ptr = ptr, .site = kSite, .req = 8, .alloc = 8}));
}
std::vector<std::byte> flagged_free(std::uint64_t lower_bound, std::uint64_t ptr, EventKind kind = EventKind::kfree) {
    return test::encode_event(test::free_event(
        {.ts = lower_bound, .ptr = ptr, .site = kSite, .kind = kind, .flags = KLEAK_TS_LOWER_BOUND}));
}
std::vector<std::byte> exact_free(std::uint64_t ts, std::uint64_t ptr) {
    return test::encode_event(test::free_event({.ts = ts, .ptr = ptr, .site = kSite}));
}

// The pointer of every frame (0 for a record without one: a time mark).
std::vector<std::uint64_t> ptrs(const std::vector<std::byte>& frames) {
    std::vector<std::uint64_t> out;
    FrameReader reader(frames);
    std::span<const std::byte> r;
    while (reader.next(r) == FrameStatus::ok) {
        std::uint64_t ptr = 0;
        if (r.size() >= 24) std::memcpy(&ptr, r.data() + 16, 8);
        out.push_back(ptr);
    }
    return out;
}

constexpr std::uint64_t kD = 0xd0, kA0 = 0xa0, kX = 0xf1, kP = 0xf2, kA2 = 0xa2, kMark = 0;

TEST(FrameOrder, FlaggedFreesStayJustBeforeTheReadingThatClosesTheirWindow) {
    // One CPU's drain in arrival order: a direct record from an interrupt
    // (D, 12) ahead of the batch it interrupted, then the batch: an
    // allocation at 10, two frees that read no clock (lower bound 10), and
    // the allocation at 20 whose reading closes their window. The frees sort
    // with key 20, so that D (12) cannot come between them and A2: replay
    // closes their window at 20, as the live decoder did, not at 12.
    auto frames = frames_of({kmalloc_at(12, kD), kmalloc_at(10, kA0), flagged_free(10, kX, EventKind::cache_free),
                             flagged_free(10, kP), kmalloc_at(20, kA2)});
    const std::size_t size = frames.size();
    sort_frames_by_time(frames);
    EXPECT_EQ(frames.size(), size);
    EXPECT_EQ(ptrs(frames), (std::vector<std::uint64_t>{kA0, kD, kX, kP, kA2}));

    // Closed by the batch's time mark instead: the same.
    frames = frames_of({kmalloc_at(12, kD), kmalloc_at(10, kA0), flagged_free(10, kX, EventKind::cache_free),
                        flagged_free(10, kP), test::time_mark_record(20)});
    sort_frames_by_time(frames);
    EXPECT_EQ(ptrs(frames), (std::vector<std::uint64_t>{kA0, kD, kX, kP, kMark}));
}

TEST(FrameOrder, AFlaggedFreeThatNamesItsCacheWaitsLikeAnyFree) {
    // Kind 8 (kmem_cache_free with its cache, 6.1+) sorts as kind 4 does.
    Event free = test::free_event({.ts = 10, .ptr = kX, .site = 0xffffffff81000099, .kind = EventKind::cache_free,
                                   .flags = KLEAK_TS_LOWER_BOUND, .cache = 0xffff888100001000});
    auto frames = frames_of({kmalloc_at(12, kD), kmalloc_at(10, kA0), test::encode_event(free), kmalloc_at(20, kA2)});
    sort_frames_by_time(frames);
    EXPECT_EQ(ptrs(frames), (std::vector<std::uint64_t>{kA0, kD, kX, kA2}));
}

TEST(FrameOrder, OnlyAFreeThatCarriesALowerBoundWaitsForTheNextReading) {
    // An exact free and an allocation sort by their own reading, the lower
    // bound flag notwithstanding on the allocation (it means nothing there).
    std::vector<std::byte> flagged_alloc = kmalloc_at(10, kA0);
    kleak_record_header hdr;
    std::memcpy(&hdr, flagged_alloc.data(), sizeof hdr);
    hdr.flags = KLEAK_TS_LOWER_BOUND;
    std::memcpy(flagged_alloc.data(), &hdr, sizeof hdr);
    auto frames = frames_of({kmalloc_at(12, kD), flagged_alloc, kmalloc_at(20, kA2)});
    sort_frames_by_time(frames);
    EXPECT_EQ(ptrs(frames), (std::vector<std::uint64_t>{kA0, kD, kA2}));

    frames = frames_of({kmalloc_at(12, kD), exact_free(11, kX), kmalloc_at(20, kA2)});
    sort_frames_by_time(frames);
    EXPECT_EQ(ptrs(frames), (std::vector<std::uint64_t>{kX, kD, kA2}));
}

TEST(FrameOrder, ABufferInKeyOrderIsLeftAloneThoughItsStampsStepBack) {
    // Stamps 12, 10, 20: out of order by the stamps alone, but the flagged
    // free sorts as 20 (the allocation after it), so the keys are 12, 20, 20.
    auto frames = frames_of({kmalloc_at(12, kD), flagged_free(10, kP), kmalloc_at(20, kA2)});
    const auto before = frames;
    sort_frames_by_time(frames);
    EXPECT_EQ(frames, before);

    // A plain batch in order, frees waiting for a mark: untouched too.
    frames = frames_of({kmalloc_at(10, kA0), flagged_free(10, kX), flagged_free(10, kP), test::time_mark_record(20),
                        kmalloc_at(30, kA2)});
    const auto plain = frames;
    sort_frames_by_time(frames);
    EXPECT_EQ(frames, plain);
}

TEST(FrameOrder, AFlaggedFreeWithNoReadingAfterItKeepsItsOwnStamp) {
    // A batch cut short (no closing reading in this buffer): the trailing
    // free sorts by its lower bound, after the allocation stamped the same
    // (arrival order) and before the direct record at 12.
    auto frames = frames_of({kmalloc_at(12, kD), kmalloc_at(10, kA0), flagged_free(10, kP)});
    sort_frames_by_time(frames);
    EXPECT_EQ(ptrs(frames), (std::vector<std::uint64_t>{kA0, kP, kD}));

    // Two trailing ones, the first after a reading: only those after the
    // last reading keep their own stamps.
    frames = frames_of({kmalloc_at(30, kD), flagged_free(5, kX), kmalloc_at(20, kA2), flagged_free(5, kP)});
    sort_frames_by_time(frames);
    EXPECT_EQ(ptrs(frames), (std::vector<std::uint64_t>{kP, kX, kA2, kD}));
}

}  // namespace
}  // namespace kleak::core
