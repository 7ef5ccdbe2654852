#include "snapshot.h"

#include <cstdio>
#include <ctime>

namespace kleak::core {

std::string iso8601_utc(std::int64_t unix_time_ms) {
    const std::time_t seconds = static_cast<std::time_t>(unix_time_ms / 1000);
    std::tm tm{};
    gmtime_r(&seconds, &tm);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                  tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(unix_time_ms % 1000));
    return buf;
}

nlohmann::json snapshot_document(const SnapshotContext& context, const Report& report) {
    nlohmann::json doc = {
        {"schema_version", kSnapshotSchemaVersion},
        {"kleakd_version", context.kleakd_version},
        {"host", context.host},
        {"kernel_release", context.kernel_release},
        {"boot_id", context.boot_id},
        {"time", iso8601_utc(context.unix_time_ms)},
        {"unix_time_ms", context.unix_time_ms},
        {"monotonic_ns", context.monotonic_ns},
        {"uptime_ns", context.uptime_ns},
    };
    doc.update(report_to_json(report));  // totals, sites, unmatched_frees, losses
    return doc;
}

std::string snapshot_file_text(const nlohmann::json& document, std::string_view history_section) {
    std::string text = "{";
    if (!document.empty()) {
        text = document.dump(2, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
        text.resize(text.size() - 2);  // "\n}": the section goes before it
        text += ',';
    }
    text += "\n  \"history\": ";
    text += history_section;
    text += "\n}\n";
    return text;
}

}  // namespace kleak::core
