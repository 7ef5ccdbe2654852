#include "app/history_restore.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>

#include "core/history_section.h"
#include "kernel/host_info.h"
#include "service/snapshot_writer.h"

namespace kleak {

namespace {

namespace fs = std::filesystem;

// The histories of 5,000 sites after 30 days are about 90 MiB of JSON; a
// file much larger was not written by kleakd.
constexpr std::uintmax_t kMaxSnapshotBytes = 512ull << 20;

// Why the file cannot be read back at all, or nothing.
std::optional<std::string> unreadable(const fs::path& path, bool& worth_a_warning) {
    std::error_code ec;
    const std::uintmax_t size = fs::file_size(path, ec);
    worth_a_warning = ec != std::errc::no_such_file_or_directory;
    if (!worth_a_warning) return "no snapshot there yet";
    if (ec) return "cannot read it: " + ec.message();
    if (size > kMaxSnapshotBytes)
        return "it is " + std::to_string(size >> 20) + " MiB, more than kleakd reads back (" +
               std::to_string(kMaxSnapshotBytes >> 20) + " MiB)";
    return std::nullopt;
}

std::uint64_t newest_point_ns(const core::SavedSites& sites) {
    std::uint64_t newest = 0;
    for (const auto& [address, tiers] : sites)
        for (const auto& points : tiers)
            if (!points.empty()) newest = std::max(newest, points.back().t_ns);
    return newest;
}

}  // namespace

void restore_site_histories(core::SiteVerdicts& verdicts, const fs::path& snapshot_directory) {
    const fs::path path = service::latest_snapshot_path(snapshot_directory);
    const auto afresh = [&](bool warn, const std::string& why) {
        if (warn) {
            spdlog::warn("site histories start afresh, not from {}: {}", path.string(), why);
        } else {
            spdlog::info("site histories start afresh, not from {}: {}", path.string(), why);
        }
    };
    try {
        bool warn = false;
        if (auto why = unreadable(path, warn)) return afresh(warn, *why);
        std::ifstream in(path, std::ios::binary);
        if (!in) return afresh(true, std::string("cannot open it: ") + std::strerror(errno));
        core::ParsedHistorySection read = core::read_history_section(in);
        if (!read.histories) return afresh(!read.missing, read.error);
        const core::HistoryOrigin here{boot_id(), kernel_release(), verdicts.period_ns()};
        if (auto why = core::why_not_restore(read.histories->origin, here)) return afresh(false, *why);
        core::SavedSites& sites = read.histories->sites;
        const std::uint64_t newest = newest_point_ns(sites), now = monotonic_now_ns();
        spdlog::info(
            "site histories of {} call sites restored from {} (newest point {}s old); verdicts judge only what this "
            "kleakd samples",
            sites.size(), path.string(), now > newest ? (now - newest) / 1'000'000'000 : 0);
        verdicts.restore(std::move(sites));
    } catch (const std::exception& e) {  // allocation failure: start afresh rather than not at all
        afresh(true, e.what());
    }
}

}  // namespace kleak
