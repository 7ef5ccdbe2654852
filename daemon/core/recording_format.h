// On-disk recording, as the seed laid it out: one file per CPU ("kleak0",
// "kleak1", ...) holding that CPU's raw ring records, plus meta.json with what
// a report on another machine, or after a reboot, needs (ABI version, kernel
// release, boot id, losses, and the symbol of every call site seen).
//
// Per-CPU file: a 32-byte header, then frames of (u32 length, record bytes),
// little-endian host order as written; records are exactly what the ring held,
// so replay decodes them with the same decoder as live tracing.
#pragma once

#include <nlohmann/json.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "recording_frames.h"
#include "symbolizer.h"

namespace kleak::core {

inline constexpr char kRecordingMagic[8] = {'K', 'L', 'E', 'A', 'K', 'R', 'E', 'C'};
inline constexpr std::uint32_t kRecordingFormatVersion = 1;
// The most CPUs a recording may claim: Linux's NR_CPUS limit (CONFIG_NR_CPUS
// tops out at 8192); a larger meta.json `cpus` is refused, not allocated for.
inline constexpr unsigned kMaxRecordingCpus = 8192;
inline constexpr std::size_t kRecordingHeaderSize = 32;

struct RecordingFileHeader {
    std::uint32_t format_version = kRecordingFormatVersion;
    std::uint32_t abi_version = 0;
    std::uint32_t cpu = 0;
};

std::string cpu_file_name(unsigned cpu);  // "kleak<cpu>"

std::array<std::byte, kRecordingHeaderSize> encode_file_header(const RecordingFileHeader& header);
// Error text, or nullopt on success.
std::optional<std::string> decode_file_header(std::span<const std::byte> bytes, RecordingFileHeader& out);

struct RecordingMeta {
    std::uint32_t format_version = kRecordingFormatVersion;
    std::uint32_t abi_version = 0;
    std::string kleakd_version;
    std::string kernel_release;
    std::string boot_id;
    std::string hostname;
    unsigned cpus = 0;
    std::uint64_t buffer_size = 0;
    std::uint64_t start_ns = 0;  // CLOCK_MONOTONIC, the records' clock
    std::uint64_t end_ns = 0;
    std::vector<std::uint64_t> dropped_per_cpu;
    std::uint64_t peak_backlog_bytes = 0;
    std::uint64_t records = 0;
    std::map<std::uint64_t, Symbol> symbols;  // every call site seen
};

nlohmann::json meta_to_json(const RecordingMeta& meta);
// Throws std::runtime_error naming the missing or mistyped key.
RecordingMeta meta_from_json(const nlohmann::json& json);

}  // namespace kleak::core
