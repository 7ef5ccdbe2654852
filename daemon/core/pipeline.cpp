#include "pipeline.h"

#include <algorithm>
#include <limits>

namespace kleak::core {

Pipeline::Pipeline(unsigned cpu_count) : merger_(cpu_count), newest_ts_(merger_.cpu_count(), 0) {}

void Pipeline::on_record(unsigned cpu, std::span<const std::byte> record) {
    Event event;
    if (decode_record(record, static_cast<std::uint16_t>(cpu), event) != DecodeStatus::ok) {
        ++undecodable_;
        return;
    }
    ++records_;
    const std::size_t slot = std::min<std::size_t>(cpu, newest_ts_.size() - 1);
    newest_ts_[slot] = std::max(newest_ts_[slot], event.ts_ns);
    merger_.stage(event);
}

void Pipeline::release_until(std::uint64_t watermark) {
    merger_.release_until(watermark, [this](const Event& e) { tracker_.apply(e); });
}

void Pipeline::finish() { release_until(std::numeric_limits<std::uint64_t>::max()); }

void Pipeline::reset() {
    merger_.reset();
    tracker_.reset();
    std::fill(newest_ts_.begin(), newest_ts_.end(), 0);
    undecodable_ = 0;
    records_ = 0;
}

}  // namespace kleak::core
