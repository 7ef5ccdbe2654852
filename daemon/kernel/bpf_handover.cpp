#include "kernel/bpf_handover.h"

#include <unistd.h>

#include <algorithm>

namespace kleak {

std::string identity_fd_name() { return std::string(kHandoverPrefix) + "identity"; }
std::string map_fd_name(std::string_view map) { return std::string(kHandoverPrefix) + "map-" + std::string(map); }
std::string link_fd_name(std::string_view program) {
    return std::string(kHandoverPrefix) + "link-" + std::string(program);
}
bool is_handover_name(std::string_view name) { return name.starts_with(kHandoverPrefix); }

Handover::Handover(std::vector<NamedFd> fds) : fds_(std::move(fds)) {
    for (const NamedFd& f : fds_) names_.push_back(f.name);
    std::sort(names_.begin(), names_.end());
    names_.erase(std::unique(names_.begin(), names_.end()), names_.end());
    const auto it = std::find_if(fds_.begin(), fds_.end(), [](const NamedFd& f) { return f.name == identity_fd_name(); });
    if (it == fds_.end()) return;
    char buf[512];
    const ssize_t n = ::pread(it->fd.get(), buf, sizeof buf, 0);
    if (n > 0) identity_.assign(buf, static_cast<std::size_t>(n));
}

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

bool Handover::has(const std::string& name) const {
    return std::any_of(fds_.begin(), fds_.end(), [&](const NamedFd& f) { return f.name == name; });
}

}  // namespace kleak
