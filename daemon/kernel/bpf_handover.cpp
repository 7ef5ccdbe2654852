#include "kernel/bpf_handover.h"

#include <algorithm>

namespace kleak {

std::string map_fd_name(std::string_view map) { return "kleakd-bpf-map-" + std::string(map); }
std::string link_fd_name(std::string_view program) { return "kleakd-bpf-link-" + std::string(program); }
std::string ring_fd_name(unsigned cpu) { return "kleakd-bpf-ring-" + std::to_string(cpu); }

Handover::Handover(std::vector<NamedFd> fds, std::string identity)
    : fds_(std::move(fds)), identity_(std::move(identity)) {}

UniqueFd Handover::take(const std::string& name) {
    // The last one of a name: a store that raced a crash may have left two.
    for (auto it = fds_.rbegin(); it != fds_.rend(); ++it) {
        if (it->name != name) continue;
        UniqueFd fd = std::move(it->fd);
        fds_.erase(std::next(it).base());
        return fd;
    }
    return UniqueFd();
}

int Handover::peek(const std::string& name) const {
    for (auto it = fds_.rbegin(); it != fds_.rend(); ++it)
        if (it->name == name) return it->fd.get();
    return -1;
}

}  // namespace kleak
