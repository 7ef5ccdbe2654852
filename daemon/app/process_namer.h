// The comm and cgroup of a process (a ProcessTable id): as recorded at the
// allocation (core/process_table.h), the cgroup's path as looked up when it
// was first recorded (app/cgroup_namer.h). A process the stream did not
// record (an older recording, a lost record) is read from /proc when the
// query asks, as before ABI 6: then it is the process's now, and "" once it
// has exited. Cached per query.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <unordered_map>

#include "core/cgroup_names.h"
#include "core/process_table.h"
#include "core/stacks_query.h"

namespace kleak {

struct ProcessName {
    std::string comm;    // "" once the process is gone
    std::string cgroup;  // its cgroup v2 path, "" if unknown
    std::string unit;    // the systemd unit or container scope of that path, "" if none
};

class ProcessNamer {
public:
    ProcessNamer(const core::ProcessTable& processes, const core::CgroupNames& cgroups)
        : processes_(processes), cgroups_(cgroups) {}
    // process: a ProcessTable id, 0 for unknown (all fields "").
    const ProcessName& name(std::uint32_t process);
    // Adds "comm", "cgroup" and "unit" to every {"process", ...} row of a
    // `stacks` result's "processes".
    void annotate_stacks(nlohmann::json& result);
    // The `leaks --by comm|cgroup` result: `processes` grouped by their comm
    // or cgroup path ("" for an exited process), most bytes (or count) first.
    // {"by", "rows": [{"key", "outstanding", "outstanding_bytes", "processes"}],
    //  "outstanding", "outstanding_bytes"}.
    nlohmann::json group(std::span<const core::ProcessTotal> processes, const std::string& by, bool by_bytes,
                         std::size_t top);
    // Adds "comms" and "cgroups" (group()'s rows, the top kTopPerSite of
    // each by bytes) to every row of `rows` (objects with a "site") whose
    // site has live allocations that carry a process; other rows stay as
    // they are. Bounded: a row gains at most 2 * kTopPerSite entries.
    static constexpr std::size_t kTopPerSite = 3;
    void annotate_sites(nlohmann::json& rows, const std::map<std::string, std::vector<core::ProcessTotal>>& by_site);

private:
    const core::ProcessTable& processes_;
    const core::CgroupNames& cgroups_;
    std::unordered_map<std::uint32_t, ProcessName> names_;  // by process id
};

}  // namespace kleak
