// Raw records in, tracker state out: decode -> stage in the merge -> release in
// time order up to a watermark -> apply to the tracker. Live tracing and the
// replay of a recording both run through this one path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "merger.h"
#include "printk.h"
#include "tracker.h"

namespace kleak::core {

class Pipeline {
public:
    explicit Pipeline(unsigned cpu_count);

    // Where printk lines go, in merged time order. Without a sink printk
    // records are decoded and dropped (report replays, allocation-only runs).
    using PrintkSink = std::function<void(PrintkLine&&)>;
    void set_printk_sink(PrintkSink sink) { printk_sink_ = std::move(sink); }

    // Decodes and stages one record; undecodable ones are counted, not staged.
    void on_record(unsigned cpu, std::span<const std::byte> record);
    void release_until(std::uint64_t watermark);
    void finish();  // end of input: release everything

    const Tracker& tracker() const { return tracker_; }
    std::uint64_t late() const { return merger_.late(); }
    std::uint64_t undecodable() const { return undecodable_; }
    std::uint64_t records() const { return records_; }
    std::size_t staged() const { return merger_.staged(); }
    // Newest timestamp staged from `cpu` so far (0 if none).
    std::uint64_t newest_ts(unsigned cpu) const { return cpu < newest_ts_.size() ? newest_ts_[cpu] : 0; }

    void reset();

private:
    void release(const Event& event);

    Merger merger_;
    Tracker tracker_;
    std::vector<std::uint64_t> newest_ts_;
    PrintkSink printk_sink_;
    // Texts of staged printk records, by the handle their Event carries in ptr.
    std::unordered_map<std::uint64_t, std::string> printk_texts_;
    std::uint64_t next_printk_handle_ = 1;
    std::uint64_t undecodable_ = 0;
    std::uint64_t records_ = 0;
};

}  // namespace kleak::core
