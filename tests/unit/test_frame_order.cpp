// sort_frames_by_time: what `kleakd record` does to each drain's frames of a
// CPU so that replay needs no more holdback than live tracing.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "core/frame_order.h"
#include "core/recording_frames.h"

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

}  // namespace
}  // namespace kleak::core
