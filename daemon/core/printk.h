// The kernel log as kleakd captures it (the seed's tprintk): printk:console
// records from every CPU, merged in time order with the allocation records,
// kept as the last N lines in memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kleak::core {

struct PrintkLine {
    std::uint64_t seq = 0;    // 1, 2, 3, ... in merged time order, never reused
    std::uint64_t ts_ns = 0;  // CLOCK_MONOTONIC, the allocation records' clock
    std::uint16_t cpu = 0;
    std::uint32_t tgid = 0;
    std::uint32_t tid = 0;
    int level = -1;           // 0..7 from a "<N>" prefix; -1 when there was none
    bool truncated = false;   // the message was longer than KLEAK_PRINTK_MAX
    std::string text;         // raw bytes, prefix removed; may hold any byte
};

// The text bytes of a printk record, or nullopt if the record is shorter than
// its header says (size-checked like every decode).
std::optional<std::string_view> printk_text(std::span<const std::byte> record);

// Splits a leading "<N>" (N = 0..7, or a facility-encoded number whose low
// three bits are the level, as /dev/kmsg accepts) off `text`.
int take_level_prefix(std::string_view& text);

// "[  123.456789] cpu1: text", with control bytes and non-ASCII escaped as
// \xNN so a terminal never interprets them. No trailing newline.
std::string format_printk_line(const PrintkLine& line);

// The last `capacity` lines.
class PrintkLog {
public:
    explicit PrintkLog(std::size_t capacity) : capacity_(capacity == 0 ? 1 : capacity) {}

    const PrintkLine& append(PrintkLine line);  // assigns line.seq

    struct Query {
        std::uint64_t after_seq = 0;  // only lines with seq > after_seq
        std::uint64_t since_ns = 0;   // only lines with ts_ns >= since_ns
        int max_level = 7;            // only lines with level <= max_level (unknown levels always pass)
        std::size_t limit = 0;        // 0: all; else the newest `limit` matching lines
    };
    std::vector<PrintkLine> query(const Query& q) const;
    static bool matches(const PrintkLine& line, const Query& q);

    std::uint64_t last_seq() const { return next_seq_ - 1; }
    std::uint64_t evicted() const { return evicted_; }  // lines pushed out by newer ones
    std::size_t size() const { return lines_.size(); }
    void set_capacity(std::size_t capacity);
    void clear();
    // A window saved by an earlier daemon (state_image.h): its lines, oldest
    // first with rising seq, and its counters; the newest `capacity` are kept.
    void restore(std::vector<PrintkLine> lines, std::uint64_t last_seq, std::uint64_t evicted);

private:
    std::size_t capacity_;
    std::deque<PrintkLine> lines_;
    std::uint64_t next_seq_ = 1;
    std::uint64_t evicted_ = 0;
};

}  // namespace kleak::core
