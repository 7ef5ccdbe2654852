#include "history_section.h"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <functional>
#include <limits>
#include <vector>

#include "site_verdicts.h"

namespace kleak::core {

namespace {

using nlohmann::json;

constexpr std::uint64_t kNsPerMs = 1'000'000;

// Thrown by the checks below only; the public functions return its message.
struct Refused {
    std::string what;
};

std::string hex(std::uint64_t v) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
    return buf;
}

std::string interval_text(std::uint64_t ns) {
    if (ns % 1'000'000'000 == 0) return std::to_string(ns / 1'000'000'000) + "s";
    return std::to_string(ns / kNsPerMs) + "ms";
}

void append_number(std::string& out, std::uint64_t v) {
    char buf[24];
    const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, end);
}

// One line: {"site_address": "0x...", "tiers": [[[t_ms,outstanding,bytes],...],[...],[...],[...]]}
void append_site(std::string& out, std::uint64_t address, const HistoryTiers& tiers) {
    out += "{\"site_address\": \"" + hex(address) + "\", \"tiers\": [";
    for (std::size_t t = 0; t < tiers.size(); ++t) {
        out += t == 0 ? "[" : ",[";
        for (std::size_t i = 0; i < tiers[t].size(); ++i) {
            const HistoryPoint& p = tiers[t][i];
            out += i == 0 ? "[" : ",[";
            append_number(out, p.t_ns / kNsPerMs);
            out += ',';
            append_number(out, p.outstanding);
            out += ',';
            append_number(out, p.bytes);
            out += ']';
        }
        out += ']';
    }
    out += "]}";
}

std::string json_string(const std::string& s) {
    return json(s).dump(-1, ' ', /*ensure_ascii=*/false, json::error_handler_t::replace);
}

const json& member(const json& object, const char* key, const std::string& path) {
    const auto it = object.find(key);
    if (it == object.end()) throw Refused{path + "." + key + " is missing"};
    return *it;
}

std::uint64_t unsigned_at(const json& j, const std::string& path) {
    if (!j.is_number_integer() || (!j.is_number_unsigned() && j.get<std::int64_t>() < 0))
        throw Refused{path + " is not a non-negative integer"};
    return j.get<std::uint64_t>();
}

std::string string_at(const json& j, const std::string& path) {
    if (!j.is_string()) throw Refused{path + " is not a string"};
    return j.get<std::string>();
}

std::uint64_t address_at(const json& j, const std::string& path) {
    const std::string text = string_at(j, path);
    std::uint64_t address = 0;
    const char* end = text.data() + text.size();
    const bool prefixed = text.size() > 2 && text.starts_with("0x");
    const auto [stop, ec] = prefixed ? std::from_chars(text.data() + 2, end, address, 16)
                                     : std::from_chars_result{text.data(), std::errc::invalid_argument};
    if (ec != std::errc{} || stop != end || address == 0)
        throw Refused{path + " is not a call-site address (0x and at most 16 hex digits)"};
    return address;
}

// The path of a point is only spelled out for its error: a section holds
// millions of them.
std::string point_path(const std::string& tier_path, std::size_t i) {
    return tier_path + "[" + std::to_string(i) + "]";
}

HistoryPoint point_at(const json& j, const std::string& tier_path, std::size_t i) {
    const auto refuse = [&](const std::string& what) { return Refused{point_path(tier_path, i) + what}; };
    const auto number = [&](std::size_t k) {
        if (!j[k].is_number_integer() || (!j[k].is_number_unsigned() && j[k].get<std::int64_t>() < 0))
            throw refuse("[" + std::to_string(k) + "] is not a non-negative integer");
        return j[k].get<std::uint64_t>();
    };
    if (!j.is_array() || j.size() != 3) throw refuse(" is not a point [t_ms, outstanding, bytes]");
    const std::uint64_t t_ms = number(0), outstanding = number(1), bytes = number(2);
    if (t_ms > std::numeric_limits<std::uint64_t>::max() / kNsPerMs) throw refuse("[0] is past the end of the clock");
    if (outstanding > std::numeric_limits<std::uint32_t>::max())
        throw refuse("[1] is more than a history keeps (2^32 - 1)");
    return {t_ms * kNsPerMs, outstanding, bytes};
}

// Its size is checked before a point is read, so a huge array costs nothing more.
std::vector<HistoryPoint> tier_at(const json& j, std::size_t tier, const std::string& path) {
    if (!j.is_array()) throw Refused{path + " is not an array of points"};
    if (j.size() > kHistoryTiers[tier].capacity)
        throw Refused{path + " holds " + std::to_string(j.size()) + " points; resolution " + std::to_string(tier) +
                      " keeps at most " + std::to_string(kHistoryTiers[tier].capacity)};
    std::vector<HistoryPoint> points;
    points.reserve(j.size());
    for (std::size_t i = 0; i < j.size(); ++i) {
        const HistoryPoint p = point_at(j[i], path, i);
        if (!points.empty() && p.t_ns <= points.back().t_ns)
            throw Refused{point_path(path, i) + " is not later than the point before it"};
        points.push_back(p);
    }
    if (!points.empty() && points.back().t_ns - points.front().t_ns >= kMaxHistorySpanNs)
        throw Refused{path + " spans more than a history can (49 days)"};
    return points;
}

HistoryTiers tiers_at(const json& j, const std::string& path) {
    if (!j.is_array() || j.size() != kHistoryTiers.size())
        throw Refused{path + " is not an array of " + std::to_string(kHistoryTiers.size()) + " resolutions"};
    HistoryTiers tiers;
    for (std::size_t t = 0; t < tiers.size(); ++t) tiers[t] = tier_at(j[t], t, path + "[" + std::to_string(t) + "]");
    if (std::all_of(tiers.begin(), tiers.end(), [](const auto& points) { return points.empty(); }))
        throw Refused{path + " holds no points"};
    return tiers;
}

std::string site_path(std::size_t index) { return "history.sites[" + std::to_string(index) + "]"; }

// One entry of "sites", into `into`.
void add_site_or_refuse(const json& site, std::size_t index, SavedSites& into) {
    const std::string path = site_path(index);
    if (!site.is_object()) throw Refused{path + " is not an object"};
    const std::uint64_t address = address_at(member(site, "site_address", path), path + ".site_address");
    if (!into.emplace(address, tiers_at(member(site, "tiers", path), path + ".tiers")).second)
        throw Refused{path + ".site_address " + hex(address) + " appears twice"};
}

std::string too_many_sites(const std::string& count) {
    return "history.sites holds " + count + " sites, more than the " + std::to_string(kMaxSavedSites) +
           " kleakd reads back";
}

// Everything but the entries of "sites" (version first: another version may
// differ anywhere).
HistoryOrigin origin_or_refuse(const json& section) {
    const std::string path = "history";
    if (!section.is_object()) throw Refused{path + " is not an object"};
    const json& version = member(section, "version", path);
    if (!version.is_number_integer() || version.get<std::int64_t>() != kHistorySectionVersion)
        throw Refused{path + ".version is " + (version.is_number_integer() ? version.dump() : "not a number") +
                      "; this kleakd reads version " + std::to_string(kHistorySectionVersion)};
    HistoryOrigin origin;
    origin.boot_id = string_at(member(section, "boot_id", path), path + ".boot_id");
    origin.kernel_release = string_at(member(section, "kernel_release", path), path + ".kernel_release");
    origin.interval_ns = unsigned_at(member(section, "interval_ns", path), path + ".interval_ns");
    if (origin.interval_ns == 0 || origin.interval_ns > kMaxHistoryIntervalNs)
        throw Refused{path + ".interval_ns is outside what kleakd samples at (up to 10 minutes)"};
    const json& sites = member(section, "sites", path);
    if (!sites.is_array()) throw Refused{path + ".sites is not an array"};
    if (sites.size() > kMaxSavedSites) throw Refused{too_many_sites(std::to_string(sites.size()))};
    return origin;
}

// Reads a snapshot's text keeping only its history section, and of that only
// the header: each entry of "sites" is converted into `sites` as soon as the
// parser has it, then dropped from the tree.
//
// nlohmann's callback depths: 1 for the document's keys, 2 for the section's,
// 3 for an entry of "sites", 4 and more inside one.
class SectionReader {
public:
    bool operator()(int depth, json::parse_event_t event, json& parsed) {
        using Event = json::parse_event_t;
        if (event == Event::key && depth == 1) {
            in_history_ = parsed == "history";
            return in_history_;  // the report's part is not kept
        }
        if (!in_history_) return true;
        if (event == Event::key && depth == 2) in_sites_ = parsed == "sites";
        if (!in_sites_ || depth < 3) return true;
        if (depth > 3 || event == Event::object_start || event == Event::array_start) return within_budget();
        // An entry, whole (or not an object): converted, not kept in the tree.
        if (error_.empty()) {
            if (count_ == kMaxSavedSites) {
                error_ = too_many_sites("more than " + std::to_string(kMaxSavedSites));
            } else if (events_ > kMaxSiteEvents) {
                error_ = site_path(count_) + " is larger than any history kleakd writes";
            } else {
                try {
                    add_site_or_refuse(parsed, count_, sites_);
                } catch (const Refused& refused) {
                    error_ = refused.what;
                }
            }
        }
        ++count_;
        events_ = 0;
        return false;
    }

    SavedSites& sites() { return sites_; }
    const std::string& error() const { return error_; }

private:
    // A valid entry is at most kMaxHistoryPoints points of 5 parser events
    // each (and 14 more): past 8 a point, an entry's contents are not kept,
    // so that one huge entry cannot hold the daemon's memory.
    static constexpr std::size_t kMaxSiteEvents = 8 * kMaxHistoryPoints;
    bool within_budget() { return ++events_ <= kMaxSiteEvents; }

    bool in_history_ = false, in_sites_ = false;
    std::size_t count_ = 0, events_ = 0;
    SavedSites sites_;
    std::string error_;
};

}  // namespace

std::string history_section_text(const SiteVerdicts& verdicts, std::span<const SiteStats> sites,
                                 const HistoryOrigin& here) {
    std::string out = "{\n    \"version\": " + std::to_string(kHistorySectionVersion) +
                      ",\n    \"boot_id\": " + json_string(here.boot_id) +
                      ",\n    \"kernel_release\": " + json_string(here.kernel_release) +
                      ",\n    \"interval_ns\": " + std::to_string(here.interval_ns) + ",\n    \"sites\": [";
    bool first = true;
    const auto next_line = [&] {
        out += first ? "\n      " : ",\n      ";
        first = false;
    };
    const SiteHistories& histories = verdicts.histories();
    HistoryTiers tiers;
    const std::size_t known = std::min(sites.size(), histories.site_count());
    for (SiteId id = 0; id < known; ++id) {
        if (!histories.has_history(id)) continue;
        for (std::size_t t = 0; t < tiers.size(); ++t) histories.series_into(id, t, tiers[t]);
        next_line();
        append_site(out, sites[id].call_site, tiers);
    }
    // The restored ones no site has taken yet, in address order (stable files).
    std::vector<std::uint64_t> pending;
    pending.reserve(verdicts.pending().size());
    for (const auto& [address, loaded] : verdicts.pending()) pending.push_back(address);
    std::sort(pending.begin(), pending.end());
    for (const std::uint64_t address : pending) {
        next_line();
        append_site(out, address, verdicts.pending().at(address));
    }
    out += first ? "]\n  }" : "\n    ]\n  }";
    return out;
}

ParsedHistorySection parse_history_section(const json& section) {
    try {
        SavedHistories saved{origin_or_refuse(section), {}};
        const json& sites = section.at("sites");
        saved.sites.reserve(sites.size());
        for (std::size_t i = 0; i < sites.size(); ++i) add_site_or_refuse(sites[i], i, saved.sites);
        return {std::move(saved), {}};
    } catch (const Refused& refused) {
        return {std::nullopt, refused.what};
    }
}

ParsedHistorySection read_history_section(std::istream& snapshot) {
    SectionReader reader;
    json doc;
    try {
        doc = json::parse(snapshot, std::ref(reader));
    } catch (const json::exception& e) {  // parse_error: cut short, or not JSON
        return {std::nullopt, std::string("not a JSON document: ") + e.what()};
    }
    if (!doc.is_object()) return {std::nullopt, "not a JSON object"};
    const auto section = doc.find("history");
    if (section == doc.end()) return {std::nullopt, "no history in it (written by an older kleakd)", true};
    try {
        SavedHistories saved{origin_or_refuse(*section), {}};
        if (!reader.error().empty()) return {std::nullopt, reader.error()};
        saved.sites = std::move(reader.sites());
        return {std::move(saved), {}};
    } catch (const Refused& refused) {
        return {std::nullopt, refused.what};
    }
}

std::optional<std::string> why_not_restore(const HistoryOrigin& saved, const HistoryOrigin& here) {
    if (here.boot_id.empty())
        return "this boot's id cannot be read (/proc/sys/kernel/random/boot_id), and call-site addresses are only "
               "comparable within one boot";
    if (saved.boot_id != here.boot_id)
        return "written in another boot (boot_id " + saved.boot_id + ", this one " + here.boot_id +
               "): call-site addresses move with every boot (KASLR)";
    if (saved.kernel_release != here.kernel_release)
        return "written under kernel " + saved.kernel_release + ", this is " + here.kernel_release;
    if (saved.interval_ns != here.interval_ns)
        return "sampled every " + interval_text(saved.interval_ns) + " and verdicts.interval is now " +
               interval_text(here.interval_ns) + ": old and new points would not line up";
    return std::nullopt;
}

}  // namespace kleak::core
