#include "sizes.h"

#include <algorithm>
#include <bit>
#include <cctype>
#include <charconv>

namespace kleak::core {

SizeParse parse_buffer_size(std::string_view text) {
    const std::string valid = "a power of two from 4K to 1G, e.g. 8M, 512K, 65536";
    std::uint64_t value = 0;
    const char* begin = text.data();
    const char* end = text.data() + text.size();
    const auto [ptr, ec] = std::from_chars(begin, end, value);
    if (ec != std::errc{} || ptr == begin) return {std::nullopt, "'" + std::string(text) + "' is not a size; use " + valid};

    std::string suffix(ptr, end);
    for (char& c : suffix) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    unsigned shift = 0;
    if (suffix.empty() || suffix == "B") shift = 0;
    else if (suffix == "K" || suffix == "KB" || suffix == "KIB") shift = 10;
    else if (suffix == "M" || suffix == "MB" || suffix == "MIB") shift = 20;
    else if (suffix == "G" || suffix == "GB" || suffix == "GIB") shift = 30;
    else return {std::nullopt, "'" + std::string(text) + "' has an unknown unit; use " + valid};

    if (value > (kMaxBufferSize >> shift)) return {std::nullopt, "'" + std::string(text) + "' is too large; use " + valid};
    const std::uint64_t bytes = value << shift;
    if (bytes < kMinBufferSize) return {std::nullopt, "'" + std::string(text) + "' is too small; use " + valid};
    if (!std::has_single_bit(bytes))
        return {std::nullopt, "'" + std::string(text) + "' is not a power of two (BPF ring buffers must be); use " + valid};
    return {bytes, {}};
}

std::string format_size(std::uint64_t bytes) {
    static constexpr struct { unsigned shift; const char* unit; } units[] = {{30, "G"}, {20, "M"}, {10, "K"}};
    for (const auto& u : units) {
        if (bytes >= (std::uint64_t{1} << u.shift) && bytes % (std::uint64_t{1} << u.shift) == 0)
            return std::to_string(bytes >> u.shift) + u.unit;
    }
    return std::to_string(bytes);
}

std::uint64_t suggest_buffer_size(std::uint64_t current, std::uint64_t peak_backlog_bytes,
                                  std::uint64_t dropped_records, std::uint64_t bytes_per_record) {
    if (dropped_records == 0) return 0;
    const std::uint64_t needed = std::max(current, peak_backlog_bytes) + dropped_records * bytes_per_record;
    if (needed >= kMaxBufferSize / 2) return kMaxBufferSize;
    return std::max(kMinBufferSize, std::bit_ceil(needed * 2));
}

}  // namespace kleak::core
