// `kleakctl diff OLD.json NEW.json`: what grew between two snapshots, site by
// site ("what grew since yesterday"). Pure: JSON documents in, rows out.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace kleak::ctl {

struct SiteDelta {
    std::string site;
    std::string function;
    std::uint64_t old_outstanding = 0, new_outstanding = 0;
    std::uint64_t old_bytes = 0, new_bytes = 0;
    std::string verdict;  // the newer snapshot's, "" when it has none
    std::int64_t delta_outstanding() const {
        return static_cast<std::int64_t>(new_outstanding) - static_cast<std::int64_t>(old_outstanding);
    }
    std::int64_t delta_bytes() const { return static_cast<std::int64_t>(new_bytes) - static_cast<std::int64_t>(old_bytes); }
};

struct SnapshotDiff {
    std::string old_time, new_time;
    std::int64_t seconds_between = 0;  // by unix_time_ms
    std::vector<SiteDelta> sites;      // every site in either, most bytes gained first
    std::vector<std::string> warnings;  // different boots, hosts, a daemon restarted between them
};

// Throws std::runtime_error naming what is missing when a document is not a
// kleakd snapshot.
SnapshotDiff diff_snapshots(const nlohmann::json& older, const nlohmann::json& newer);

nlohmann::json diff_to_json(const SnapshotDiff& diff, std::size_t top);
std::string format_diff(const SnapshotDiff& diff, std::size_t top);

}  // namespace kleak::ctl
