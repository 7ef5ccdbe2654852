#include "pipeline.h"

#include <algorithm>
#include <limits>

#include "kleak_abi.h"

namespace kleak::core {

Pipeline::Pipeline(unsigned cpu_count) : merger_(cpu_count), newest_ts_(merger_.cpu_count(), 0) {}

void Pipeline::on_record(unsigned cpu, std::span<const std::byte> record) {
    Event event;
    if (decode_record(record, static_cast<std::uint16_t>(cpu), event) != DecodeStatus::ok) {
        ++undecodable_;
        return;
    }
    ++records_;
    if (event.kind == EventKind::printk) {
        if (!printk_sink_) return;
        event.ptr = next_printk_handle_++;
        printk_texts_.emplace(event.ptr, std::string(*printk_text(record)));
    }
    const std::size_t slot = std::min<std::size_t>(cpu, newest_ts_.size() - 1);
    newest_ts_[slot] = std::max(newest_ts_[slot], event.ts_ns);
    merger_.stage(event);
}

void Pipeline::release(const Event& event) {
    if (event.kind != EventKind::printk) {
        tracker_.apply(event);
        return;
    }
    auto it = printk_texts_.find(event.ptr);
    if (it == printk_texts_.end()) return;
    PrintkLine line;
    line.ts_ns = event.ts_ns;
    line.cpu = event.cpu;
    line.tgid = event.tgid;
    line.tid = event.tid;
    line.truncated = (event.gfp_flags & KLEAK_PRINTK_TRUNCATED) != 0;
    std::string_view text = it->second;
    line.level = take_level_prefix(text);
    // Kernels that pass console-formatted text end it with a newline; a line
    // is a line without it.
    if (!text.empty() && text.back() == '\n') text.remove_suffix(1);
    line.text = std::string(text);
    printk_texts_.erase(it);
    if (printk_sink_) printk_sink_(std::move(line));
}

void Pipeline::release_until(std::uint64_t watermark) {
    merger_.release_until(watermark, [this](const Event& e) { release(e); });
}

void Pipeline::finish() { release_until(std::numeric_limits<std::uint64_t>::max()); }

void Pipeline::reset() {
    merger_.reset();
    tracker_.reset();
    printk_texts_.clear();
    std::fill(newest_ts_.begin(), newest_ts_.end(), 0);
    undecodable_ = 0;
    records_ = 0;
}

}  // namespace kleak::core
