#include "printk.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <iterator>

#include "kleak_abi.h"

namespace kleak::core {

static_assert(offsetof(kleak_printk_record, len) == 16);
static_assert(offsetof(kleak_printk_record, tid) == 20);
static_assert(offsetof(kleak_printk_record, text) == KLEAK_PRINTK_HEADER_SIZE);

std::optional<std::string_view> printk_text(std::span<const std::byte> record) {
    if (record.size() < KLEAK_PRINTK_HEADER_SIZE) return std::nullopt;
    std::uint32_t len = 0;
    std::memcpy(&len, record.data() + offsetof(kleak_printk_record, len), sizeof len);
    if (len > KLEAK_PRINTK_MAX || record.size() < KLEAK_PRINTK_HEADER_SIZE + std::size_t{len}) return std::nullopt;
    return std::string_view(reinterpret_cast<const char*>(record.data()) + KLEAK_PRINTK_HEADER_SIZE, len);
}

int take_level_prefix(std::string_view& text) {
    if (text.size() < 3 || text[0] != '<') return -1;
    std::size_t i = 1;
    unsigned value = 0;
    while (i < text.size() && i < 5 && text[i] >= '0' && text[i] <= '9') value = value * 10 + unsigned(text[i++] - '0');
    if (i == 1 || i >= text.size() || text[i] != '>') return -1;
    text.remove_prefix(i + 1);
    return static_cast<int>(value & 7);
}

std::string format_printk_line(const PrintkLine& line) {
    char head[64];
    std::snprintf(head, sizeof head, "[%5llu.%06llu] cpu%u: ", static_cast<unsigned long long>(line.ts_ns / 1000000000),
                  static_cast<unsigned long long>(line.ts_ns % 1000000000 / 1000), line.cpu);
    std::string out = head;
    for (const char c : line.text) {
        const auto u = static_cast<unsigned char>(c);
        if (u == '\\') {
            out += "\\\\";
        } else if (u < 0x20 || u >= 0x7f) {
            char esc[8];
            std::snprintf(esc, sizeof esc, "\\x%02x", u);
            out += esc;
        } else {
            out += c;
        }
    }
    if (line.truncated) out += " [truncated]";
    return out;
}

const PrintkLine& PrintkLog::append(PrintkLine line) {
    line.seq = next_seq_++;
    lines_.push_back(std::move(line));
    while (lines_.size() > capacity_) {
        lines_.pop_front();
        ++evicted_;
    }
    return lines_.back();
}

bool PrintkLog::matches(const PrintkLine& line, const Query& q) {
    return line.seq > q.after_seq && line.ts_ns >= q.since_ns && (line.level < 0 || line.level <= q.max_level);
}

std::vector<PrintkLine> PrintkLog::query(const Query& q) const {
    std::vector<PrintkLine> out;
    if (q.limit == 0) {
        for (const PrintkLine& line : lines_)
            if (matches(line, q)) out.push_back(line);
        return out;
    }
    // Newest first, stopping at the limit: a `-n 20` on a log of a million
    // lines copies 20 of them, not every match.
    for (auto it = lines_.rbegin(); it != lines_.rend() && out.size() < q.limit; ++it)
        if (matches(*it, q)) out.push_back(*it);
    std::reverse(out.begin(), out.end());
    return out;
}

void PrintkLog::set_capacity(std::size_t capacity) {
    capacity_ = capacity == 0 ? 1 : capacity;
    while (lines_.size() > capacity_) {
        lines_.pop_front();
        ++evicted_;
    }
}

void PrintkLog::clear() {
    lines_.clear();
    evicted_ = 0;
}

void PrintkLog::restore(std::vector<PrintkLine> lines, std::uint64_t last_seq, std::uint64_t evicted) {
    lines_.assign(std::make_move_iterator(lines.begin()), std::make_move_iterator(lines.end()));
    next_seq_ = last_seq + 1;
    evicted_ = evicted;
    set_capacity(capacity_);  // this daemon's may be smaller
}

}  // namespace kleak::core
