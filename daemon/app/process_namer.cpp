#include "app/process_namer.h"

#include <fstream>
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

const ProcessName& ProcessNamer::name(std::uint32_t tgid) {
    auto it = names_.find(tgid);
    if (it != names_.end()) return it->second;
    ProcessName out;
    out.comm = read_proc(tgid, "comm");
    if (!out.comm.empty() && out.comm.back() == '\n') out.comm.pop_back();
    out.cgroup = core::cgroup_v2_path(read_proc(tgid, "cgroup"));
    out.unit = core::systemd_unit(out.cgroup);
    return names_.emplace(tgid, std::move(out)).first->second;
}

void ProcessNamer::annotate_stacks(nlohmann::json& result) {
    for (auto& stack : result.at("stacks")) {
        for (auto& process : stack.at("processes")) {
            const ProcessName& n = name(process.at("tgid").get<std::uint32_t>());
            process["comm"] = n.comm;
            process["cgroup"] = n.cgroup;
            process["unit"] = n.unit;
        }
    }
}

}  // namespace kleak
