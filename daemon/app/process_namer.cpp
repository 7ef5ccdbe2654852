#include "app/process_namer.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <sstream>

#include "core/process_origin.h"

namespace kleak {

namespace {

std::string read_proc(std::uint32_t tgid, const char* file) {
    std::ifstream in("/proc/" + std::to_string(tgid) + "/" + file);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

}  // namespace

const ProcessName& ProcessNamer::name(std::uint32_t process) {
    auto it = names_.find(process);
    if (it != names_.end()) return it->second;
    ProcessName out;
    if (process != 0) {
        const core::ProcessIdentity& p = processes_[process];
        if (p.recorded) {
            out.comm = p.comm_text();
            out.cgroup = cgroups_.path(p.cgroup_id);
        } else {
            out.comm = read_proc(p.tgid, "comm");
            if (!out.comm.empty() && out.comm.back() == '\n') out.comm.pop_back();
            out.cgroup = core::cgroup_v2_path(read_proc(p.tgid, "cgroup"));
        }
        out.unit = core::systemd_unit(out.cgroup);
    }
    return names_.emplace(process, std::move(out)).first->second;
}

void ProcessNamer::annotate_stacks(nlohmann::json& result) {
    for (auto& stack : result.at("stacks")) {
        for (auto& process : stack.at("processes")) {
            const ProcessName& n = name(process.at("process").get<std::uint32_t>());
            process["comm"] = n.comm;
            process["cgroup"] = n.cgroup;
            process["unit"] = n.unit;
        }
    }
}

nlohmann::json ProcessNamer::group(std::span<const core::ProcessTotal> processes, const std::string& by,
                                   bool by_bytes, std::size_t top) {
    struct Row {
        std::uint64_t outstanding = 0, outstanding_bytes = 0, processes = 0;
    };
    std::map<std::string, Row> rows;
    std::uint64_t outstanding = 0, outstanding_bytes = 0;
    for (const core::ProcessTotal& p : processes) {
        const ProcessName& n = name(p.process);
        Row& row = rows[by == "cgroup" ? n.cgroup : n.comm];
        row.outstanding += p.outstanding;
        row.outstanding_bytes += p.outstanding_bytes;
        ++row.processes;
        outstanding += p.outstanding;
        outstanding_bytes += p.outstanding_bytes;
    }
    std::vector<std::pair<std::string, Row>> sorted(rows.begin(), rows.end());
    std::stable_sort(sorted.begin(), sorted.end(), [by_bytes](const auto& a, const auto& b) {
        return by_bytes ? a.second.outstanding_bytes > b.second.outstanding_bytes
                        : a.second.outstanding > b.second.outstanding;
    });
    if (sorted.size() > top) sorted.resize(top);
    nlohmann::json out_rows = nlohmann::json::array();
    for (const auto& [key, row] : sorted)
        out_rows.push_back({{"key", key},
                            {"outstanding", row.outstanding},
                            {"outstanding_bytes", row.outstanding_bytes},
                            {"processes", row.processes}});
    return {{"by", by}, {"rows", std::move(out_rows)}, {"outstanding", outstanding}, {"outstanding_bytes", outstanding_bytes}};
}

void ProcessNamer::annotate_sites(nlohmann::json& rows,
                                  const std::map<std::string, std::vector<core::ProcessTotal>>& by_site) {
    if (by_site.empty()) return;
    for (auto& row : rows) {
        const auto it = by_site.find(row.at("site").get<std::string>());
        if (it == by_site.end()) continue;
        row["comms"] = group(it->second, "comm", true, kTopPerSite).at("rows");
        row["cgroups"] = group(it->second, "cgroup", true, kTopPerSite).at("rows");
    }
}

}  // namespace kleak
