#include "pipeline.h"

#include <algorithm>
#include <limits>

#include "fast_decode.h"
#include "kleak_abi.h"

namespace kleak::core {

namespace {

// Released records handed to the tracker per call: long enough for its
// prefetching to run ahead, short enough to stay in L1/L2 (96 KiB).
constexpr std::size_t kApplyChunk = 2048;
constexpr std::size_t kAll = std::numeric_limits<std::size_t>::max();

}  // namespace

Pipeline::Pipeline(unsigned cpu_count)
    : merger_(cpu_count),
      stamp_windows_(merger_.cpu_count()),
      released_(kApplyChunk),
      newest_ts_(merger_.cpu_count(), 0) {}

void Pipeline::on_record(unsigned cpu, std::span<const std::byte> record) {
    Event event;
    if (decode_record_fast(record, static_cast<std::uint16_t>(cpu), event) != DecodeStatus::ok) [[unlikely]] {
        ++undecodable_;
        return;
    }
    if (event.kind != EventKind::time_mark) [[likely]]
        ++records_;
    const auto stage_it = [this](const Event& e) { stage(e); };
    if (event.kind == EventKind::printk && !keep_printk(event, record))
        return stamp_windows_.reading_only(event, stage_it);
    stamp_windows_.take(event, stage_it);
}

// Replay's loop: the frames of one file all come from one CPU, so they are
// decoded into a small buffer and staged a buffer at a time (one queue
// lookup, one copy), instead of record by record. The stamp windows are
// closed in place (StampWindows' rules, without its copies): a free waiting
// for its CPU's next reading stays in the buffer, and only what precedes the
// first such free is staged when the buffer fills.
FrameStatus Pipeline::on_frames(unsigned cpu, FrameReader& frames) {
    constexpr std::size_t kBuffer = 256;  // 12 KiB: stays in L1
    constexpr std::size_t kNone = kBuffer;
    Event buffer[kBuffer];
    const auto cpu16 = static_cast<std::uint16_t>(cpu);
    std::uint64_t newest = 0;
    // Frees left waiting by the previous call go first, still waiting (so
    // many that they fill the buffer only in damaged input: they go as they are).
    std::vector<Event>& carried = stamp_windows_.of(cpu16);
    if (carried.size() >= kBuffer) [[unlikely]] {
        for (const Event& e : carried) newest = std::max(newest, e.ts_ns);
        merger_.stage_from_one_cpu(carried);
        carried.clear();
    }
    std::size_t n = carried.size();
    std::copy(carried.begin(), carried.end(), buffer);
    carried.clear();
    std::size_t open = n > 0 ? 0 : kNone;  // the first waiting free in buffer
    const auto close_open = [&](std::uint64_t reading_ns) {
        for (std::size_t i = open; i < n; ++i) StampWindows::close_window(buffer[i], reading_ns);
        open = kNone;
    };
    const auto stage_ready = [&](std::size_t ready) {
        for (std::size_t i = 0; i < ready; ++i) newest = std::max(newest, buffer[i].ts_ns);
        merger_.stage_from_one_cpu(std::span(buffer, ready));
        std::copy(buffer + ready, buffer + n, buffer);
        n -= ready;
        if (open != kNone) open -= ready;
    };
    std::span<const std::byte> record;
    FrameStatus status;
    while ((status = frames.next(record)) == FrameStatus::ok) {
        Event& event = buffer[n];
        if (decode_record_fast(record, cpu16, event) != DecodeStatus::ok) [[unlikely]] {
            ++undecodable_;
            continue;
        }
        if (StampWindows::waits(event)) [[unlikely]] {
            ++records_;
            if (open == kNone) open = n;
            ++n;
        } else {
            if (open != kNone) close_open(event.ts_ns);
            if (event.kind == EventKind::time_mark) continue;
            ++records_;
            if (event.kind == EventKind::printk && !keep_printk(event, record)) [[unlikely]]
                continue;
            ++n;
        }
        if (n == kBuffer) {
            // A full buffer of waiting frees (damaged input) goes as it is.
            if (open == 0) open = kNone;
            stage_ready(open == kNone ? n : open);
        }
    }
    // What still waits is carried to the next call (or to finish()).
    const std::size_t ready = open == kNone ? n : open;
    carried.assign(buffer + ready, buffer + n);
    open = kNone;
    n = ready;
    stage_ready(ready);
    note_newest(cpu16, newest);
    return status;
}

bool Pipeline::keep_printk(Event& event, std::span<const std::byte> record) {
    if (!printk_sink_) return false;
    event.ptr = next_printk_handle_++;
    printk_texts_.emplace(event.ptr, std::string(*printk_text(record)));
    return true;
}

void Pipeline::note_newest(std::uint16_t cpu, std::uint64_t ts_ns) {
    const std::size_t slot = std::min<std::size_t>(cpu, newest_ts_.size() - 1);
    newest_ts_[slot] = std::max(newest_ts_[slot], ts_ns);
}

void Pipeline::apply_released(std::span<const Event> released) {
    // Allocation records go to the tracker in runs; printk lines (only staged
    // when there is a sink) go to the sink in between, in merged order.
    while (!released.empty()) {
        const auto printk = std::find_if(released.begin(), released.end(),
                                         [](const Event& e) { return e.kind == EventKind::printk; });
        const auto tracked = static_cast<std::size_t>(printk - released.begin());
        if (tracked > 0) tracker_.apply(released.first(tracked));
        if (tracked == released.size()) break;
        release_printk(released[tracked]);
        released = released.subspan(tracked + 1);
    }
}

void Pipeline::release_printk(const Event& event) {
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

void Pipeline::begin_release(std::uint64_t watermark) {
    release_some(kAll);
    merger_.begin_release(watermark);
}

bool Pipeline::release_some(std::size_t max_records) {
    if (handoff_ && !printk_sink_) {
        while (max_records > 0 && merger_.releasing()) {
            const std::span<Event> room = handoff_->room();
            const std::size_t n = merger_.release_some(room.first(std::min(max_records, room.size())));
            handoff_->filled(n);
            max_records -= n;
        }
        return merger_.releasing();
    }
    while (max_records > 0 && merger_.releasing()) {
        const std::size_t n = merger_.release_some(std::span(released_).first(std::min(max_records, released_.size())));
        apply_released(std::span(released_).first(n));
        max_records -= n;
    }
    return merger_.releasing();
}

void Pipeline::release_until(std::uint64_t watermark) {
    begin_release(watermark);
    release_some(kAll);
}

void Pipeline::finish() {
    stamp_windows_.close_all([this](const Event& e) { stage(e); });
    release_until(std::numeric_limits<std::uint64_t>::max());
}

void Pipeline::reset() {
    merger_.reset();
    stamp_windows_.clear();
    tracker_.reset();
    printk_texts_.clear();
    std::fill(newest_ts_.begin(), newest_ts_.end(), 0);
    undecodable_ = 0;
    records_ = 0;
}

}  // namespace kleak::core
