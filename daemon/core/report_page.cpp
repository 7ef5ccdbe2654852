#include "report_page.h"

#include <algorithm>
#include <cstdlib>
#include <string_view>

namespace kleak::core {

namespace {

using nlohmann::json;

// As `suspects` ranks verdicts (suspects_query.cpp): leaks first, sites whose
// counts overstate last. A site without one (written by an older kleakd, or
// one that only frees) ranks with the young.
int verdict_rank(const json& site) {
    const auto it = site.find("verdict");
    if (it == site.end() || !it->is_string()) return 1;
    const std::string_view v = it->get_ref<const std::string&>();
    if (v == "growing") return 0;
    if (v == "young") return 1;
    if (v == "reclaimable") return 2;
    if (v == "steady") return 3;
    if (v == "untracked-frees") return 4;
    return 1;
}

double number_or_zero(const json& site, const char* key) {
    const auto it = site.find(key);
    return it != site.end() && it->is_number() ? it->get<double>() : 0.0;
}

std::string string_or(const json& site, const char* key, std::string fallback) {
    const auto it = site.find(key);
    return it != site.end() && it->is_string() ? it->get<std::string>() : fallback;
}

std::uint64_t address_of(const json& site) {
    return std::strtoull(site.at("address").get_ref<const std::string&>().c_str(), nullptr, 16);
}

// Snapshots from before allocator families traced the slab allocator only.
std::string family_of(const json& site) { return string_or(site, "family", "slab"); }

// Seconds from the snapshot back to t_ns (negative: the past).
double seconds_before(std::uint64_t t_ns, std::uint64_t now_ns) {
    return (static_cast<double>(t_ns) - static_cast<double>(now_ns)) / 1e9;
}

// Rounded to the millisecond: the page needs no more, and the blob stays small.
double ms_precision(double seconds) { return static_cast<double>(static_cast<std::int64_t>(seconds * 1000)) / 1000; }

json table_row(const json& site, bool plotted) {
    return {{"site", site.at("site")},
            {"function", site.at("function")},
            {"cache", string_or(site, "cache", "")},
            {"family", family_of(site)},
            {"verdict", string_or(site, "verdict", "young")},
            {"reasons", site.contains("reasons") ? site.at("reasons") : json::array()},
            {"outstanding", site.at("outstanding")},
            {"outstanding_bytes", site.at("outstanding_bytes")},
            {"growth_per_hour", number_or_zero(site, "growth_per_hour")},
            {"growth_bytes_per_hour", number_or_zero(site, "growth_bytes_per_hour")},
            {"replaced", site.at("replaced")},
            {"plotted", plotted}};
}

}  // namespace

std::vector<std::size_t> suspects_order(const json& snapshot) {
    const json& sites = snapshot.at("sites");
    std::vector<std::size_t> order;
    for (std::size_t i = 0; i < sites.size(); ++i)
        if (sites[i].at("outstanding").get<std::uint64_t>() > 0) order.push_back(i);
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        const json& x = sites[a];
        const json& y = sites[b];
        const int rx = verdict_rank(x), ry = verdict_rank(y);
        if (rx != ry) return rx < ry;
        const double gx = number_or_zero(x, "growth_bytes_per_hour"), gy = number_or_zero(y, "growth_bytes_per_hour");
        if (gx != gy) return gx > gy;
        return x.at("outstanding_bytes").get<std::uint64_t>() > y.at("outstanding_bytes").get<std::uint64_t>();
    });
    return order;
}

std::vector<std::string> sites_to_plot(const json& snapshot, std::size_t curves) {
    std::vector<std::string> addresses;
    for (const std::size_t i : suspects_order(snapshot)) {
        if (addresses.size() == curves) break;
        addresses.push_back(snapshot.at("sites")[i].at("address").get<std::string>());
    }
    return addresses;
}

std::vector<HistoryPoint> merged_history(const HistoryTiers& tiers) {
    std::vector<HistoryPoint> merged;
    for (const auto& tier : tiers) {  // finest first
        std::vector<HistoryPoint> older;
        for (const HistoryPoint& p : tier)
            if (merged.empty() || p.t_ns < merged.front().t_ns) older.push_back(p);
        merged.insert(merged.begin(), older.begin(), older.end());
    }
    return merged;
}

std::vector<HistoryPoint> history_points_from_json(const json& history_result) {
    std::vector<HistoryPoint> points;
    for (const json& p : history_result.at("points"))
        points.push_back({p.at("t_ns").get<std::uint64_t>(), p.at("outstanding").get<std::uint64_t>(),
                          p.at("bytes").get<std::uint64_t>()});
    return points;
}

json report_page_data(const json& snapshot, const SavedSites& histories, const ReportPageOptions& options) {
    const json& sites = snapshot.at("sites");
    const std::uint64_t now_ns = snapshot.at("monotonic_ns").get<std::uint64_t>();
    const std::vector<std::size_t> order = suspects_order(snapshot);

    json stacks = json::array();
    for (const std::size_t i : order) {
        const json& site = sites[i];
        const std::string cache = string_or(site, "cache", "");
        stacks.push_back({{"frames",
                           {family_of(site), cache.empty() ? "cache unknown" : cache, site.at("function"),
                            site.at("site")}},
                          {"bytes", site.at("outstanding_bytes")},
                          {"count", site.at("outstanding")},
                          {"verdict", string_or(site, "verdict", "young")}});
    }

    json curves = json::array();
    for (std::size_t k = 0; k < order.size() && curves.size() < options.curves; ++k) {
        const json& site = sites[order[k]];
        json points = json::array();
        if (const auto it = histories.find(address_of(site)); it != histories.end())
            for (const HistoryPoint& p : merged_history(it->second))
                points.push_back({ms_precision(seconds_before(p.t_ns, now_ns)), p.outstanding, p.bytes});
        curves.push_back({{"site", site.at("site")},
                          {"function", site.at("function")},
                          {"cache", string_or(site, "cache", "")},
                          {"verdict", string_or(site, "verdict", "young")},
                          {"outstanding", site.at("outstanding")},
                          {"outstanding_bytes", site.at("outstanding_bytes")},
                          {"growth_per_hour", number_or_zero(site, "growth_per_hour")},
                          {"points", std::move(points)}});
    }

    json table = json::array();
    for (std::size_t k = 0; k < order.size() && k < options.table_rows; ++k)
        table.push_back(table_row(sites[order[k]], k < curves.size()));

    json verdicts = {{"samples", 0}, {"growing", 0}, {"interval_ns", 0}, {"window_ns", 0}};
    json restart = nullptr;
    if (const auto v = snapshot.find("verdicts"); v != snapshot.end()) {
        verdicts["samples"] = v->value("samples", std::uint64_t{0});
        verdicts["growing"] = v->value("growing", std::uint64_t{0});
        if (const auto rules = v->find("rules"); rules != v->end()) {
            verdicts["interval_ns"] = rules->value("interval_ns", std::uint64_t{0});
            verdicts["window_ns"] = rules->value("window_ns", std::uint64_t{0});
        }
        if (const auto r = v->find("restart_ns"); r != v->end() && r->is_number_unsigned())
            restart = ms_precision(seconds_before(r->get<std::uint64_t>(), now_ns));
    }

    return {{"page_version", kReportPageVersion},
            {"host", snapshot.at("host")},
            {"kernel_release", snapshot.at("kernel_release")},
            {"boot_id", snapshot.at("boot_id")},
            {"kleakd_version", snapshot.at("kleakd_version")},
            {"time", snapshot.at("time")},
            {"uptime_ns", snapshot.at("uptime_ns")},
            {"source", options.source},
            {"totals", snapshot.at("totals")},
            {"losses", snapshot.at("losses")},
            {"verdicts", std::move(verdicts)},
            {"restart_s", std::move(restart)},
            {"flame", {{"levels", {"allocator", "slab cache", "function", "call site"}}, {"stacks", std::move(stacks)}}},
            {"table", std::move(table)},
            {"table_total", order.size()},
            {"curves", std::move(curves)}};
}

}  // namespace kleak::core
