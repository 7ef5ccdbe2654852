// The JSON snapshot document (schema: proto/snapshot.schema.json): the kleak
// report plus where and when it was taken. Time values come from the caller.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "report.h"

namespace kleak::core {

inline constexpr int kSnapshotSchemaVersion = 1;

struct SnapshotContext {
    std::string host;
    std::string kernel_release;
    std::string boot_id;
    std::string kleakd_version;
    std::int64_t unix_time_ms = 0;   // wall clock, for humans and file names
    std::uint64_t monotonic_ns = 0;  // the records' clock
    std::uint64_t uptime_ns = 0;     // since the daemon attached (or was last reset)
};

nlohmann::json snapshot_document(const SnapshotContext& context, const Report& report);

// A snapshot file's text: `document` (an object without "history")
// pretty-printed, invalid UTF-8 from the kernel's names replaced rather than
// fatal, with the "history" section (history_section_text) last, and a
// newline.
std::string snapshot_file_text(const nlohmann::json& document, std::string_view history_section);

// "2026-11-26T10:35:21.123Z"
std::string iso8601_utc(std::int64_t unix_time_ms);

}  // namespace kleak::core
