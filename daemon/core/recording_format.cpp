#include "recording_format.h"

#include <charconv>
#include <algorithm>
#include <cstdio>
#include <type_traits>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string_view>

namespace kleak::core {

std::string cpu_file_name(unsigned cpu) { return "kleak" + std::to_string(cpu); }

std::array<std::byte, kRecordingHeaderSize> encode_file_header(const RecordingFileHeader& header) {
    std::array<std::byte, kRecordingHeaderSize> out{};
    std::memcpy(out.data(), kRecordingMagic, sizeof kRecordingMagic);
    std::memcpy(out.data() + 8, &header.format_version, 4);
    std::memcpy(out.data() + 12, &header.abi_version, 4);
    std::memcpy(out.data() + 16, &header.cpu, 4);
    return out;
}

std::optional<std::string> decode_file_header(std::span<const std::byte> bytes, RecordingFileHeader& out) {
    if (bytes.size() < kRecordingHeaderSize) return "file is shorter than a recording header";
    if (std::memcmp(bytes.data(), kRecordingMagic, sizeof kRecordingMagic) != 0)
        return "not a kleakd recording (bad magic)";
    std::memcpy(&out.format_version, bytes.data() + 8, 4);
    std::memcpy(&out.abi_version, bytes.data() + 12, 4);
    std::memcpy(&out.cpu, bytes.data() + 16, 4);
    if (out.format_version != kRecordingFormatVersion)
        return "recording format version " + std::to_string(out.format_version) + ", this kleakd reads " +
               std::to_string(kRecordingFormatVersion);
    return std::nullopt;
}

namespace {

// Exactly "0x" and hex digits, as hex() writes them: sscanf("0x%llx") would
// also take a sign, blanks, trailing junk and overflow without complaint.
std::optional<std::uint64_t> parse_hex_address(std::string_view text) {
    if (text.size() <= 2 || text[0] != '0' || text[1] != 'x') return std::nullopt;
    std::uint64_t value = 0;
    const char* end = text.data() + text.size();
    const auto [ptr, ec] = std::from_chars(text.data() + 2, end, value, 16);
    if (ec != std::errc{} || ptr != end) return std::nullopt;
    return value;
}

template <class T>
T required(const nlohmann::json& json, const char* key) {
    if (!json.contains(key)) throw std::runtime_error(std::string("meta.json: missing key '") + key + "'");
    const nlohmann::json& value = json.at(key);
    // nlohmann converts silently (-1 -> 4294967295, 2.7 -> 2): insist on the
    // JSON type the field really has.
    const auto non_negative_integer = [](const nlohmann::json& v) {
        return v.is_number_unsigned() || (v.is_number_integer() && v.get<std::int64_t>() >= 0);
    };
    bool right_type = true;
    // ... and would cut a number too big for T (2^32 + 2 CPUs read as 2).
    if constexpr (std::is_unsigned_v<T>)
        right_type = non_negative_integer(value) && value.template get<std::uint64_t>() <= std::numeric_limits<T>::max();
    if constexpr (std::is_same_v<T, std::string>) right_type = value.is_string();
    if constexpr (std::is_same_v<T, std::vector<std::uint64_t>>) {
        right_type = value.is_array() && std::all_of(value.begin(), value.end(), non_negative_integer);
    }
    if (!right_type) throw std::runtime_error(std::string("meta.json: key '") + key + "' has the wrong type");
    try {
        return value.get<T>();
    } catch (const nlohmann::json::exception&) {
        throw std::runtime_error(std::string("meta.json: key '") + key + "' has the wrong type");
    }
}

}  // namespace

nlohmann::json meta_to_json(const RecordingMeta& meta) {
    nlohmann::json symbols = nlohmann::json::object();
    for (const auto& [address, symbol] : meta.symbols) {
        symbols[hex_address(address)] = {{"function", symbol.function}, {"offset", symbol.offset}, {"module", symbol.module}};
    }
    return {
        {"format_version", meta.format_version},
        {"abi_version", meta.abi_version},
        {"kleakd_version", meta.kleakd_version},
        {"kernel_release", meta.kernel_release},
        {"boot_id", meta.boot_id},
        {"hostname", meta.hostname},
        {"cpus", meta.cpus},
        {"buffer_size", meta.buffer_size},
        {"start_ns", meta.start_ns},
        {"end_ns", meta.end_ns},
        {"dropped_per_cpu", meta.dropped_per_cpu},
        {"peak_backlog_bytes", meta.peak_backlog_bytes},
        {"records", meta.records},
        {"symbols", std::move(symbols)},
    };
}

RecordingMeta meta_from_json(const nlohmann::json& json) {
    if (!json.is_object()) throw std::runtime_error("meta.json: not a JSON object");
    RecordingMeta meta;
    meta.format_version = required<std::uint32_t>(json, "format_version");
    if (meta.format_version != kRecordingFormatVersion)
        throw std::runtime_error("meta.json: recording format version " + std::to_string(meta.format_version) +
                                 ", this kleakd reads " + std::to_string(kRecordingFormatVersion));
    meta.abi_version = required<std::uint32_t>(json, "abi_version");
    meta.kleakd_version = required<std::string>(json, "kleakd_version");
    meta.kernel_release = required<std::string>(json, "kernel_release");
    meta.boot_id = required<std::string>(json, "boot_id");
    meta.hostname = required<std::string>(json, "hostname");
    meta.cpus = required<unsigned>(json, "cpus");
    meta.buffer_size = required<std::uint64_t>(json, "buffer_size");
    meta.start_ns = required<std::uint64_t>(json, "start_ns");
    meta.end_ns = required<std::uint64_t>(json, "end_ns");
    meta.dropped_per_cpu = required<std::vector<std::uint64_t>>(json, "dropped_per_cpu");
    meta.peak_backlog_bytes = required<std::uint64_t>(json, "peak_backlog_bytes");
    meta.records = required<std::uint64_t>(json, "records");
    // What a report sizes its merge by, and subtracts: checked, not trusted.
    if (meta.cpus == 0 || meta.cpus > kMaxRecordingCpus)
        throw std::runtime_error("meta.json: cpus " + std::to_string(meta.cpus) + " is out of range (1 to " +
                                 std::to_string(kMaxRecordingCpus) + ")");
    if (meta.dropped_per_cpu.size() > meta.cpus)
        throw std::runtime_error("meta.json: dropped_per_cpu has " + std::to_string(meta.dropped_per_cpu.size()) +
                                 " entries for " + std::to_string(meta.cpus) + " CPUs");
    if (meta.end_ns < meta.start_ns)
        throw std::runtime_error("meta.json: end_ns " + std::to_string(meta.end_ns) + " is before start_ns " +
                                 std::to_string(meta.start_ns));
    const auto symbols = required<nlohmann::json>(json, "symbols");
    if (!symbols.is_object()) throw std::runtime_error("meta.json: key 'symbols' has the wrong type");
    for (const auto& [key, value] : symbols.items()) {
        const std::optional<std::uint64_t> address = parse_hex_address(key);
        if (!address) throw std::runtime_error("meta.json: symbol key '" + key + "' is not a hex address");
        meta.symbols[*address] = Symbol{required<std::string>(value, "function"),
                                       required<std::uint64_t>(value, "offset"), required<std::string>(value, "module")};
    }
    return meta;
}

}  // namespace kleak::core
