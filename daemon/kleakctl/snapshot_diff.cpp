#include "kleakctl/snapshot_diff.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <stdexcept>

namespace kleak::ctl {

namespace {

const nlohmann::json& field(const nlohmann::json& doc, const char* key, const char* which) {
    if (!doc.is_object() || !doc.contains(key))
        throw std::runtime_error(std::string("the ") + which + " file is not a kleakd snapshot: it has no \"" + key +
                                 "\"");
    return doc.at(key);
}

std::string text_of(const nlohmann::json& doc, const char* key) {
    return doc.contains(key) && doc.at(key).is_string() ? doc.at(key).get<std::string>() : "";
}

std::uint64_t count_of(const nlohmann::json& row, const char* key) {
    return row.contains(key) && row.at(key).is_number_unsigned() ? row.at(key).get<std::uint64_t>() : 0;
}

}  // namespace

SnapshotDiff diff_snapshots(const nlohmann::json& older, const nlohmann::json& newer) {
    SnapshotDiff diff;
    const auto& old_sites = field(older, "sites", "older");
    const auto& new_sites = field(newer, "sites", "newer");
    diff.old_time = text_of(older, "time");
    diff.new_time = text_of(newer, "time");
    if (older.contains("unix_time_ms") && newer.contains("unix_time_ms"))
        diff.seconds_between =
            (newer.at("unix_time_ms").get<std::int64_t>() - older.at("unix_time_ms").get<std::int64_t>()) / 1000;
    if (diff.seconds_between < 0)
        diff.warnings.push_back("the first snapshot is the newer one: every change below is backwards");
    if (text_of(older, "host") != text_of(newer, "host"))
        diff.warnings.push_back("the snapshots come from different hosts (" + text_of(older, "host") + ", " +
                                text_of(newer, "host") + ")");
    else if (text_of(older, "boot_id") != text_of(newer, "boot_id"))
        diff.warnings.push_back("the snapshots come from different boots: each counts from its own start");
    else if (count_of(newer, "uptime_ns") < count_of(older, "uptime_ns") && diff.seconds_between > 0)
        diff.warnings.push_back("kleakd restarted or was reset between them: the newer counts from then");

    // Sites are matched by name (function+offset [module]): addresses move
    // between boots, names move only with the kernel.
    std::map<std::string, SiteDelta> by_site;
    const auto take = [&by_site](const nlohmann::json& rows, std::uint64_t SiteDelta::*outstanding,
                                 std::uint64_t SiteDelta::*bytes) {
        for (const auto& row : rows) {
            SiteDelta& d = by_site[text_of(row, "site")];
            d.site = text_of(row, "site");
            d.function = text_of(row, "function");
            d.*outstanding = count_of(row, "outstanding");
            d.*bytes = count_of(row, "outstanding_bytes");
            d.verdict = text_of(row, "verdict");  // the newer's wins: it is read last
        }
    };
    take(old_sites, &SiteDelta::old_outstanding, &SiteDelta::old_bytes);
    for (auto& [name, d] : by_site) d.verdict.clear();  // a verdict from the older alone is stale
    take(new_sites, &SiteDelta::new_outstanding, &SiteDelta::new_bytes);
    for (auto& [name, d] : by_site)
        if (d.old_outstanding != 0 || d.new_outstanding != 0) diff.sites.push_back(std::move(d));
    std::sort(diff.sites.begin(), diff.sites.end(), [](const SiteDelta& a, const SiteDelta& b) {
        if (a.delta_bytes() != b.delta_bytes()) return a.delta_bytes() > b.delta_bytes();
        return a.site < b.site;
    });
    return diff;
}

nlohmann::json diff_to_json(const SnapshotDiff& diff, std::size_t top) {
    nlohmann::json rows = nlohmann::json::array();
    for (std::size_t i = 0; i < diff.sites.size() && (top == 0 || i < top); ++i) {
        const SiteDelta& d = diff.sites[i];
        rows.push_back({{"site", d.site},
                        {"function", d.function},
                        {"old_outstanding", d.old_outstanding},
                        {"new_outstanding", d.new_outstanding},
                        {"delta_outstanding", d.delta_outstanding()},
                        {"old_outstanding_bytes", d.old_bytes},
                        {"new_outstanding_bytes", d.new_bytes},
                        {"delta_outstanding_bytes", d.delta_bytes()},
                        {"verdict", d.verdict}});
    }
    return {{"old_time", diff.old_time},
            {"new_time", diff.new_time},
            {"seconds_between", diff.seconds_between},
            {"warnings", diff.warnings},
            {"sites", std::move(rows)}};
}

std::string format_diff(const SnapshotDiff& diff, std::size_t top) {
    std::string out;
    for (const std::string& w : diff.warnings) out += "warning: " + w + "\n";
    const std::size_t shown = top == 0 ? diff.sites.size() : std::min(top, diff.sites.size());
    out += fmt::format("from {} to {} ({} s): {} call sites, most bytes gained first:\n", diff.old_time, diff.new_time,
                       diff.seconds_between, shown);
    out += fmt::format("{:>12} {:>14} {:>12} {:>14} {:<15}  {}\n", "outstanding", "change", "bytes", "change",
                       "verdict", "caller");
    for (std::size_t i = 0; i < shown; ++i) {
        const SiteDelta& d = diff.sites[i];
        out += fmt::format("{:>12} {:>+14} {:>12} {:>+14} {:<15}  {}\n", d.new_outstanding, d.delta_outstanding(),
                           d.new_bytes, d.delta_bytes(), d.verdict.empty() ? "-" : d.verdict, d.site);
    }
    return out;
}

}  // namespace kleak::ctl
