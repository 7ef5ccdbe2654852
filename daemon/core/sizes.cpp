#include "sizes.h"

#include <algorithm>
#include <bit>
#include <cctype>
#include <charconv>
#include <limits>
#include <utility>

namespace kleak::core {

namespace {

enum class SizeSyntax { ok, not_a_size, unknown_unit };

// The notation both parsers share: decimal digits, then an optional unit
// (B, K/KB/KiB, M/MB/MiB, G/GB/GiB, any case). Values past 2^64 - 1 bytes
// saturate there, so every range check rejects them as too large.
SizeSyntax parse_size_syntax(std::string_view text, std::uint64_t& bytes) {
    std::uint64_t value = 0;
    const char* begin = text.data();
    const char* end = text.data() + text.size();
    const auto [ptr, ec] = std::from_chars(begin, end, value);
    if (ec != std::errc{} || ptr == begin) return SizeSyntax::not_a_size;

    std::string suffix(ptr, end);
    for (char& c : suffix) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    unsigned shift = 0;
    if (suffix.empty() || suffix == "B") shift = 0;
    else if (suffix == "K" || suffix == "KB" || suffix == "KIB") shift = 10;
    else if (suffix == "M" || suffix == "MB" || suffix == "MIB") shift = 20;
    else if (suffix == "G" || suffix == "GB" || suffix == "GIB") shift = 30;
    else return SizeSyntax::unknown_unit;

    bytes = value > (std::numeric_limits<std::uint64_t>::max() >> shift) ? std::numeric_limits<std::uint64_t>::max()
                                                                          : value << shift;
    return SizeSyntax::ok;
}

// The range errors both parsers share; nothing when `bytes` is in range.
std::optional<std::string> check_syntax_and_range(std::string_view text, SizeSyntax syntax, std::uint64_t bytes,
                                                  std::uint64_t min, std::uint64_t max, const std::string& valid) {
    const std::string quoted = "'" + std::string(text) + "'";
    switch (syntax) {
    case SizeSyntax::not_a_size: return quoted + " is not a size; use " + valid;
    case SizeSyntax::unknown_unit: return quoted + " has an unknown unit; use " + valid;
    case SizeSyntax::ok: break;
    }
    if (bytes > max) return quoted + " is too large; use " + valid;
    if (bytes < min) return quoted + " is too small; use " + valid;
    return std::nullopt;
}

}  // namespace

SizeParse parse_buffer_size(std::string_view text) {
    const std::string valid = "a power of two from 16K to 1G, e.g. 8M, 512K, 65536";
    std::uint64_t bytes = 0;
    const SizeSyntax syntax = parse_size_syntax(text, bytes);
    if (auto error = check_syntax_and_range(text, syntax, bytes, kMinBufferSize, kMaxBufferSize, valid))
        return {std::nullopt, std::move(*error)};
    if (!std::has_single_bit(bytes))
        return {std::nullopt, "'" + std::string(text) + "' is not a power of two (BPF ring buffers must be); use " + valid};
    return {bytes, {}};
}

SizeParse parse_byte_size(std::string_view text, std::uint64_t min, std::uint64_t max) {
    const std::string valid = "a size from " + format_size(min) + " to " + format_size(max) +
                              ": a number of bytes with an optional K, M or G suffix, e.g. " +
                              format_size(std::clamp<std::uint64_t>(16 << 20, min, max));
    std::uint64_t bytes = 0;
    const SizeSyntax syntax = parse_size_syntax(text, bytes);
    if (auto error = check_syntax_and_range(text, syntax, bytes, min, max, valid)) return {std::nullopt, std::move(*error)};
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
