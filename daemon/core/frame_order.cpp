#include "frame_order.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>

#include "recording_frames.h"

namespace kleak::core {

namespace {

struct FrameRef {
    std::uint64_t ts;
    std::size_t offset;  // of the length word
    std::size_t size;    // length word + record
};

std::uint64_t record_ts(std::span<const std::byte> record) {
    std::uint64_t ts = 0;
    if (record.size() >= sizeof ts) std::memcpy(&ts, record.data(), sizeof ts);
    return ts;
}

}  // namespace

void sort_frames_by_time(std::vector<std::byte>& frames) {
    std::vector<FrameRef> refs;
    FrameReader reader(frames);
    std::span<const std::byte> record;
    bool in_order = true;
    std::size_t offset = 0;
    while (reader.next(record) == FrameStatus::ok) {
        const std::uint64_t ts = record_ts(record);
        in_order = in_order && (refs.empty() || ts >= refs.back().ts);
        refs.push_back({ts, offset, reader.consumed() - offset});
        offset = reader.consumed();
    }
    if (in_order || offset != frames.size()) return;
    std::stable_sort(refs.begin(), refs.end(), [](const FrameRef& a, const FrameRef& b) { return a.ts < b.ts; });
    std::vector<std::byte> sorted;
    sorted.reserve(frames.size());
    for (const FrameRef& f : refs) sorted.insert(sorted.end(), frames.begin() + f.offset, frames.begin() + f.offset + f.size);
    frames.swap(sorted);
}

}  // namespace kleak::core
