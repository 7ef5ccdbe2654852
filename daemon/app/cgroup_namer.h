// Looks up the path of each cgroup v2 id the tracker's ProcessTable records,
// once and soon after its first record (at the end of each release slice),
// so that a cgroup removed before the query still has its path: the id is a
// kernfs file handle (FILEID_KERNFS), opened with open_by_handle_at() on the
// cgroup2 mount (as systemd's cg_path_from_cgroupid() does) and named by
// its /proc/self/fd link. O(1) per id; needs CAP_DAC_READ_SEARCH, which
// kleakd has as root.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "core/cgroup_names.h"
#include "core/process_table.h"
#include "kernel/unique_fd.h"

namespace kleak {

class CgroupNamer {
public:
    // Finds the cgroup2 mount in /proc/self/mountinfo; without one every id
    // is named by its number.
    CgroupNamer();
    // Looks up the ids `processes` recorded since the last call.
    void name_new(const core::ProcessTable& processes);
    const core::CgroupNames& names() const { return names_; }

private:
    std::optional<std::string> look_up(std::uint64_t id) const;

    std::string mount_;
    UniqueFd mount_fd_;
    core::CgroupNames names_;
    std::size_t named_ = 0;  // of processes.cgroups()
};

}  // namespace kleak
