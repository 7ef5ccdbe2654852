#include "frame_order.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>

#include "kleak_abi.h"
#include "record_batch.h"
#include "recording_frames.h"
#include "stamp_windows.h"

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

bool waits_for_a_reading(std::span<const std::byte> record) {
    kleak_record_header hdr;
    if (!read_header(record, hdr)) return false;
    // Kind 8 is a cache_free that names its cache: the same wait.
    const EventKind kind = hdr.kind == KLEAK_CACHE_FREE_FROM ? EventKind::cache_free : static_cast<EventKind>(hdr.kind);
    return StampWindows::waits(kind, hdr.flags);
}

}  // namespace

void sort_frames_by_time(std::vector<std::byte>& frames) {
    std::vector<FrameRef> refs;
    FrameReader reader(frames);
    std::span<const std::byte> record;
    std::vector<bool> waiting;
    std::size_t offset = 0;
    while (reader.next(record) == FrameStatus::ok) {
        refs.push_back({record_ts(record), offset, reader.consumed() - offset});
        waiting.push_back(waits_for_a_reading(record));
        offset = reader.consumed();
    }
    if (offset != frames.size()) return;
    // Back to front: each waiting free takes the key of the reading after it.
    bool have_reading = false;
    std::uint64_t reading = 0;
    for (std::size_t i = refs.size(); i-- > 0;) {
        if (!waiting[i]) {
            have_reading = true;
            reading = refs[i].ts;
        } else if (have_reading) {
            refs[i].ts = reading;
        }
    }
    const bool in_order = std::is_sorted(refs.begin(), refs.end(),
                                         [](const FrameRef& a, const FrameRef& b) { return a.ts < b.ts; });
    if (in_order) return;
    std::stable_sort(refs.begin(), refs.end(), [](const FrameRef& a, const FrameRef& b) { return a.ts < b.ts; });
    std::vector<std::byte> sorted;
    sorted.reserve(frames.size());
    for (const FrameRef& f : refs) sorted.insert(sorted.end(), frames.begin() + f.offset, frames.begin() + f.offset + f.size);
    frames.swap(sorted);
}

}  // namespace kleak::core
