// Naming the process behind an allocation: its cgroup v2 path, from the text
// of /proc/PID/cgroup (the "0::PATH" line; hybrid hosts list the v1
// hierarchies too), and the systemd unit or container scope that path names.
// Pure: the caller reads the files (app/process_namer.h).
#pragma once

#include <string>
#include <string_view>

namespace kleak::core {

// "/system.slice/foo.service" from a /proc/PID/cgroup text; "" when it has
// no cgroup v2 line.
std::string cgroup_v2_path(std::string_view proc_cgroup);

// The innermost systemd unit of a cgroup path: a ".service" or ".scope"
// component (a container runtime's "docker-<id>.scope" or
// "libpod-<id>.scope" too), e.g. "foo.service" for
// "/system.slice/foo.service/worker"; "" when there is none.
std::string systemd_unit(std::string_view cgroup_path);

}  // namespace kleak::core
