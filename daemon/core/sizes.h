// Sizes the user types: ring buffers (powers of two) and plain byte counts,
// and suggesting a ring size that would have held a burst that overflowed.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace kleak::core {

constexpr std::uint64_t kMinBufferSize = 16384;  // a few 4 KiB record batches (KLEAK_BATCH_BYTES)
constexpr std::uint64_t kMaxBufferSize = std::uint64_t{1} << 30;  // 1 GiB per CPU
constexpr std::uint64_t kDefaultBufferSize = std::uint64_t{8} << 20;

struct SizeParse {
    std::optional<std::uint64_t> bytes;
    std::string error;  // set when bytes is empty
};

// "8M", "512k", "1G", "65536", "4KiB": a BPF ring must be a power of two and a
// multiple of the page size, from 16K to 1G.
SizeParse parse_buffer_size(std::string_view text);

// Any byte count from `min` to `max`, in the same notation as
// parse_buffer_size ("16M", "64K", "100000", "1GiB"; K, M and G are powers of
// 1024) but with no power-of-two rule: file sizes and other plain limits.
SizeParse parse_byte_size(std::string_view text, std::uint64_t min, std::uint64_t max);

// 8388608 -> "8M", 4096 -> "4K", 1000 -> "1000".
std::string format_size(std::uint64_t bytes);

// The smallest valid power-of-two size that would have held the biggest
// backlog a ring reached (`peak_backlog_bytes`) plus what was dropped, with
// 2x headroom; 0 when nothing was dropped.
std::uint64_t suggest_buffer_size(std::uint64_t current, std::uint64_t peak_backlog_bytes,
                                  std::uint64_t dropped_records, std::uint64_t bytes_per_record);

}  // namespace kleak::core
