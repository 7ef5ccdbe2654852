// The kernel objects one kleakd process hands the next across a restart
// (systemd's fd store, service/fd_store.h): a link per attached program, every
// map of the BPF object, and an identity saying which object and which
// configuration they were loaded with (they travel together, in one stored
// socket: fd_store.h says why). While systemd holds them the programs
// stay attached and keep writing into the rings, so a restart is never blind:
// the next process, when its identity matches, loads its programs over the
// same maps (bpf_map__reuse_fd), adopts the links instead of attaching, and
// resumes each ring at the consumer position the kernel keeps in its
// mmap'd page. Each CPU's ring is handed over too: opening a map by id
// (bpf_map_get_fd_by_id) needs CAP_SYS_ADMIN, which the service lacks.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "kernel/unique_fd.h"

namespace kleak {

struct NamedFd {
    std::string name;
    UniqueFd fd;
};

// The fds' names in the set.
std::string map_fd_name(std::string_view map);       // "kleakd-bpf-map-rings"
std::string link_fd_name(std::string_view program);  // "kleakd-bpf-link-kleak__kmalloc"
std::string ring_fd_name(unsigned cpu);              // "kleakd-bpf-ring-0": CPU 0's ring

// What the previous process handed over, by name.
class Handover {
public:
    Handover() = default;
    Handover(std::vector<NamedFd> fds, std::string identity);
    bool empty() const { return fds_.empty(); }
    // BpfTracer::identity() of the process that handed them over.
    const std::string& identity() const { return identity_; }
    // Takes the fd stored under `name`; invalid if there is none.
    UniqueFd take(const std::string& name);
    bool has(const std::string& name) const { return peek(name) >= 0; }
    // The fd stored under `name`, still owned here; -1 if there is none.
    int peek(const std::string& name) const;
    // Closes what was not taken: old links detach once systemd drops its copies too.
    void close_all() { fds_.clear(); }

private:
    std::vector<NamedFd> fds_;
    std::string identity_;
};

}  // namespace kleak
