// Who may query the daemon: root, the daemon's own user, and members of the
// socket's group. Checked on every connection from the peer's credentials
// (SO_PEERCRED, SO_PEERGROUPS), not only by the socket file's mode, because an
// activated socket's mode is systemd's to set.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>

namespace kleak::service {

struct AccessPolicy {
    std::optional<gid_t> group;  // unset: the group does not exist here
};

struct PeerVerdict {
    bool allowed = false;
    std::string peer;    // "uid 1000 (pid 4242)"
    std::string reason;  // why not, when refused
};

PeerVerdict check_peer(int connected_fd, const AccessPolicy& policy);

// The gid of `group`, or nullopt if no such group exists.
std::optional<gid_t> lookup_group(const std::string& group);

}  // namespace kleak::service
