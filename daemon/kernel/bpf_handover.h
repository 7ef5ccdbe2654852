// The kernel objects one kleakd process hands the next across a restart
// (systemd's fd store, service/fd_store.h): a link per attached program, every
// map of the BPF object, and an identity saying which object and which
// configuration they were loaded with. While systemd holds them the programs
// stay attached and keep writing into the rings, so a restart is never blind:
// the next process, when its identity matches, loads its programs over the
// same maps (bpf_map__reuse_fd), adopts the links instead of attaching, and
// resumes each ring at the consumer position the kernel keeps in its
// mmap'd page. The rings themselves are found through the `rings` map (one
// lookup per CPU), so the store needs no fd per CPU.
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

// The fd names (FDNAME=): all start with kHandoverPrefix.
inline constexpr std::string_view kHandoverPrefix = "kleakd-bpf-";
std::string identity_fd_name();                      // a memfd holding the identity text
std::string map_fd_name(std::string_view map);       // "kleakd-bpf-map-rings"
std::string link_fd_name(std::string_view program);  // "kleakd-bpf-link-kleak__kmalloc"
bool is_handover_name(std::string_view name);

// What the previous process handed over, by name.
class Handover {
public:
    Handover() = default;
    explicit Handover(std::vector<NamedFd> fds);
    bool empty() const { return fds_.empty(); }
    // The identity memfd's text; "" when none was handed over or it is unreadable.
    const std::string& identity() const { return identity_; }
    // Takes the fd stored under `name`; invalid if there is none.
    UniqueFd take(const std::string& name);
    bool has(const std::string& name) const;
    // Every name handed over (to remove them from the store when replaced).
    const std::vector<std::string>& names() const { return names_; }
    // Closes what was not taken: old links detach once systemd drops its copies too.
    void close_all() { fds_.clear(); }

private:
    std::vector<NamedFd> fds_;
    std::vector<std::string> names_;
    std::string identity_;
};

}  // namespace kleak
