// Cgroup v2 ids (what bpf_get_current_cgroup_id() returns: the inode number
// of the cgroup's directory in cgroup2fs) as the paths users know, e.g.
// "/system.slice/foo.service". Pure: app/cgroup_namer.h looks each id up in
// the kernel once, soon after a KLEAK_PROCESS record first names it, and
// stores the answer here, so a cgroup removed before the query keeps the
// path it had.
#pragma once

#include <absl/container/flat_hash_map.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace kleak::core {

// The mount point of the cgroup v2 hierarchy in a /proc/self/mountinfo text
// (the first "cgroup2" entry: "/sys/fs/cgroup", or "/sys/fs/cgroup/unified"
// on a hybrid host), octal escapes (\040) undone; "" when there is none.
std::string cgroup2_mount_point(std::string_view mountinfo);

// "/a/b" for "<mount>/a/b", "/" for the mount itself; `absolute` as it is
// when it is not under the mount.
std::string cgroup_relative_path(std::string_view absolute, std::string_view mount);

class CgroupNames {
public:
    // 16,384 paths at most (~1.5 MiB at 64-byte paths); later ids are named
    // by their number only, counted in unnamed().
    static constexpr std::size_t kMaxPaths = std::size_t{1} << 14;

    // What looking id up found: its path, or nothing (the cgroup was already
    // removed, or no cgroup v2 hierarchy is mounted here).
    void looked_up(std::uint64_t id, std::optional<std::string> path);
    // The path of id; "(removed) cgroup id N" when the lookup found nothing;
    // "cgroup id N" when id was never looked up (or did not fit).
    std::string path(std::uint64_t id) const;

    std::size_t size() const { return paths_.size(); }
    std::uint64_t removed() const { return removed_; }
    std::uint64_t unnamed() const { return unnamed_; }
    std::size_t memory_bytes() const;

private:
    absl::flat_hash_map<std::uint64_t, std::optional<std::string>> paths_;
    std::uint64_t removed_ = 0;
    std::uint64_t unnamed_ = 0;
};

}  // namespace kleak::core
