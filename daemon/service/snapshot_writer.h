// Periodic JSON snapshots on disk. Each one lands atomically under its own
// timestamped name, latest.json is atomically replaced by a copy of it (a
// scraper reads one stable name and never sees half a file), and the oldest
// snapshots beyond the retention count are deleted.
#pragma once

#include <chrono>
#include <compare>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kleak::service {

// --- naming rules (pure) -------------------------------------------------------

// "snapshot-20240102T030405.678Z.json": UTC, to the millisecond. A second
// snapshot in the same millisecond gets sequence 1: "...678Z-1.json".
std::string snapshot_file_name(std::chrono::system_clock::time_point time, unsigned sequence = 0);

// The order snapshot files were written in; nothing for any other name.
struct SnapshotName {
    std::string stamp;  // "20240102T030405.678Z": fixed width, so it sorts by time
    unsigned sequence = 0;

    auto operator<=>(const SnapshotName&) const = default;
};
std::optional<SnapshotName> parse_snapshot_file_name(std::string_view name);

// <directory>/latest.json: a copy of the newest snapshot, the one a
// restarted daemon reads its site histories back from.
std::filesystem::path latest_snapshot_path(const std::filesystem::path& directory);

// Whether `name` is one of the writer's temporary files (left behind only if
// the process died mid-write).
bool is_temp_file_name(std::string_view name);

// Of a directory listing, what to delete: the snapshot files older than the
// newest `retention` ones, and leftover temporary files. latest.json and
// foreign files are never included.
std::vector<std::string> files_to_prune(std::vector<std::string> names, unsigned retention);

// --- the writer -----------------------------------------------------------------

class SnapshotWriter {
public:
    // No I/O until the first write. A retention of 0 counts as 1: the snapshot
    // just written is never deleted.
    SnapshotWriter(std::filesystem::path directory, unsigned retention);

    // Takes effect at the next write (SIGHUP reload).
    void reconfigure(std::filesystem::path directory, unsigned retention);

    // Writes `document` (pretty-printed, with a trailing newline) as
    // <directory>/snapshot_file_name(now), then replaces <directory>/latest.json
    // with a copy, then prunes. Every file is written under a temporary name,
    // fsynced and moved into place, and the directory fsynced, so a crash
    // leaves either the old file or the new one. Creates the directory (mode
    // 0750) when missing. The directory must not be a symbolic link, and a
    // link planted in it under a snapshot's or latest.json's name is
    // replaced or passed over, never written through (file_io.h). Returns
    // nothing on success, else a message naming the path and the reason;
    // leaves no temporary file behind.
    std::optional<std::string> write(const nlohmann::json& document,
                                     std::chrono::system_clock::time_point now) noexcept;
    // The same for a document already in text (core::snapshot_file_text: its
    // history section is written straight as text).
    std::optional<std::string> write_text(std::string_view content, std::chrono::system_clock::time_point now) noexcept;

    const std::filesystem::path& directory() const { return directory_; }

private:
    std::optional<std::string> write_or_throw(std::string_view content, std::chrono::system_clock::time_point now);

    std::filesystem::path directory_;
    unsigned retention_;
    std::uint64_t temp_files_created_ = 0;  // makes temporary names unique within this process
};

}  // namespace kleak::service
