#include "stacks_query.h"

#include <absl/container/flat_hash_map.h>

#include <algorithm>
#include <map>
#include <tuple>

namespace kleak::core {

namespace {

template <class Row>
void sort_by_bytes(std::vector<Row>& rows) {
    std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
        return std::tie(b.outstanding_bytes, b.outstanding) < std::tie(a.outstanding_bytes, a.outstanding);
    });
}

// The (site, stack) totals the query keeps, before `top`.
std::vector<StackTotal> matching_stacks(const Tracker& tracker, const StacksQuery& query, Symbolizer& symbolizer) {
    std::vector<StackTotal> rows = live_stacks(tracker);
    if (!query.function.empty()) {
        std::erase_if(rows, [&](const StackTotal& row) {
            return symbolizer.resolve(tracker.sites()[row.site].call_site).function != query.function;
        });
    }
    return rows;
}

}  // namespace

std::vector<StackTotal> live_stacks(const Tracker& tracker) {
    absl::flat_hash_map<std::uint64_t, StackTotal> by_key;
    tracker.for_each_class([&](const AllocationClass& cls, std::uint64_t, std::uint64_t live) {
        if (cls.origin.stack == 0 || live == 0) return;
        StackTotal& row = by_key[(std::uint64_t{cls.site} << 32) | cls.origin.stack];
        row.site = cls.site;
        row.stack = cls.origin.stack;
        row.outstanding += live;
        row.outstanding_bytes += live * cls.bytes_alloc;
    });
    std::vector<StackTotal> rows;
    rows.reserve(by_key.size());
    for (const auto& [key, row] : by_key) rows.push_back(row);
    std::sort(rows.begin(), rows.end(), [](const StackTotal& a, const StackTotal& b) {
        return std::tie(b.outstanding_bytes, b.outstanding, a.site, a.stack) <
               std::tie(a.outstanding_bytes, a.outstanding, b.site, b.stack);
    });
    return rows;
}

namespace {

void add_to(ProcessTotal& row, const Tracker& tracker, const AllocationClass& cls, std::uint64_t live) {
    row.process = cls.origin.process;
    row.tgid = cls.origin.process != 0 ? tracker.processes()[cls.origin.process].tgid : 0;
    row.outstanding += live;
    row.outstanding_bytes += live * cls.bytes_alloc;
}

}  // namespace

std::vector<ProcessTotal> live_processes(const Tracker& tracker, std::optional<SiteId> site) {
    std::map<std::uint32_t, ProcessTotal> by_process;
    tracker.for_each_class([&](const AllocationClass& cls, std::uint64_t, std::uint64_t live) {
        if ((site && cls.site != *site) || cls.origin.stack == 0 || live == 0) return;
        add_to(by_process[cls.origin.process], tracker, cls, live);
    });
    std::vector<ProcessTotal> rows;
    for (const auto& [process, row] : by_process) rows.push_back(row);
    sort_by_bytes(rows);
    return rows;
}

std::map<std::string, std::vector<ProcessTotal>> processes_by_site(const Tracker& tracker, Symbolizer& symbolizer) {
    std::map<SiteId, std::map<std::uint32_t, ProcessTotal>> by_site;
    tracker.for_each_class([&](const AllocationClass& cls, std::uint64_t, std::uint64_t live) {
        if (cls.origin.stack == 0 || live == 0) return;
        add_to(by_site[cls.site][cls.origin.process], tracker, cls, live);
    });
    std::map<std::string, std::vector<ProcessTotal>> out;
    for (const auto& [site, by_process] : by_site) {
        const std::uint64_t call_site = tracker.sites()[site].call_site;
        std::vector<ProcessTotal>& rows = out[format_site(call_site, symbolizer.resolve(call_site))];
        for (const auto& [process, row] : by_process) rows.push_back(row);
        sort_by_bytes(rows);
    }
    return out;
}

std::span<const std::uint64_t> from_call_site(std::span<const std::uint64_t> frames, std::uint64_t call_site) {
    const auto at = std::find(frames.begin(), frames.end(), call_site);
    return at == frames.end() ? frames : std::span<const std::uint64_t>(at, frames.end());
}

std::vector<std::uint64_t> stack_frame_addresses(const Tracker& tracker, StackSource& source, Symbolizer& symbolizer,
                                                 const StacksQuery& query) {
    std::vector<StackTotal> rows = matching_stacks(tracker, query, symbolizer);
    if (query.top != 0 && rows.size() > query.top) rows.resize(query.top);
    std::vector<std::uint64_t> out;
    for (const StackTotal& row : rows) {
        const std::vector<std::uint64_t> frames = source.frames(row.stack - 1);
        const auto kept = from_call_site(frames, tracker.sites()[row.site].call_site);
        out.insert(out.end(), kept.begin(), kept.end());
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
}

nlohmann::json stacks_to_json(const Tracker& tracker, StackSource& source, Symbolizer& symbolizer,
                              const StacksQuery& query) {
    const std::vector<StackTotal> rows = matching_stacks(tracker, query, symbolizer);
    nlohmann::json stacks = nlohmann::json::array();
    std::uint64_t outstanding = 0, outstanding_bytes = 0;
    for (const StackTotal& row : rows) {
        outstanding += row.outstanding;
        outstanding_bytes += row.outstanding_bytes;
        if (query.top != 0 && stacks.size() >= query.top) continue;
        const SiteStats& site = tracker.sites()[row.site];
        const Symbol symbol = symbolizer.resolve(site.call_site);
        nlohmann::json frames = nlohmann::json::array();
        const std::vector<std::uint64_t> raw = source.frames(row.stack - 1);
        for (const std::uint64_t ip : from_call_site(raw, site.call_site))
            frames.push_back(format_site(ip, symbolizer.resolve(ip)));
        nlohmann::json processes = nlohmann::json::array();
        for (const ProcessTotal& p : live_processes(tracker, row.site))
            processes.push_back(
                {{"tgid", p.tgid},
                 {"process", p.process},
                 {"outstanding", p.outstanding},
                 {"outstanding_bytes", p.outstanding_bytes}});
        stacks.push_back({
            {"site", format_site(site.call_site, symbol)},
            {"function", symbol.known() ? symbol.function : hex_address(site.call_site)},
            {"family", family_name(site.family)},
            {"stack_id", row.stack - 1},
            {"frames", std::move(frames)},
            {"outstanding", row.outstanding},
            {"outstanding_bytes", row.outstanding_bytes},
            {"processes", std::move(processes)},
        });
    }
    return {{"stacks", std::move(stacks)}, {"outstanding", outstanding}, {"outstanding_bytes", outstanding_bytes}};
}

namespace {

// "func+0x1a [mod]" -> "func [mod]"; "0xffff..." stays.
std::string folded_frame(const std::string& frame) {
    const auto plus = frame.find('+');
    if (plus == std::string::npos) return frame;
    const auto module = frame.find(" [", plus);
    return frame.substr(0, plus) + (module == std::string::npos ? "" : frame.substr(module));
}

}  // namespace

std::string sampled_note(const nlohmann::json& result) {
    const std::uint64_t shift = result.value("sample_shift", std::uint64_t{0});
    if (shift == 0 || shift > 32) return "";
    const std::uint64_t factor = std::uint64_t{1} << shift;
    return "sampled: 1 in " + std::to_string(factor) + " allocations get a stack, so these totals are about 1/" +
           std::to_string(factor) + " of the live ones";
}

std::string folded_stacks(const nlohmann::json& result, StackWeight weight) {
    std::map<std::string, std::uint64_t> lines;
    for (const auto& row : result.at("stacks")) {
        const auto& frames = row.at("frames");
        std::string line;
        for (auto it = frames.rbegin(); it != frames.rend(); ++it) {
            if (!line.empty()) line += ';';
            line += folded_frame(it->get<std::string>());
        }
        if (line.empty()) line = row.at("site").get<std::string>();
        lines[line] += row.at(weight == StackWeight::bytes ? "outstanding_bytes" : "outstanding").get<std::uint64_t>();
    }
    std::string out;
    for (const auto& [line, n] : lines) out += line + ' ' + std::to_string(n) + '\n';
    return out;
}

}  // namespace kleak::core
