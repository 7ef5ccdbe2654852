// The comm and cgroup of a process by its tgid, read from /proc when a query
// asks (so they are the process's now, not at the allocation: a process
// that has exited is "" for both), cached per query.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <unordered_map>

#include "core/stacks_query.h"

namespace kleak {

struct ProcessName {
    std::string comm;    // "" once the process is gone
    std::string cgroup;  // its cgroup v2 path, "" if unknown
    std::string unit;    // the systemd unit or container scope of that path, "" if none
};

class ProcessNamer {
public:
    const ProcessName& name(std::uint32_t tgid);
    // Adds "comm", "cgroup" and "unit" to every {"tgid", ...} row of a
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
    std::unordered_map<std::uint32_t, ProcessName> names_;
};

}  // namespace kleak
