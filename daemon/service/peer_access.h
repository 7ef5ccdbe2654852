// Who may query the daemon, and who may change its state. Checked on every
// connection from the peer's credentials as the kernel recorded them at
// connect (SO_PEERCRED, SO_PEERGROUPS), not only by the socket file's mode,
// because an activated socket's mode is systemd's to set.
//
// Two roles: a reader may send every op that only looks (leaks, stats,
// report, ...); an administrator may also send the ops that change state
// (proto::op_changes_state: reset). Root and the daemon's own user are
// administrators; members of the socket's group are readers; members of the
// admin group (socket.admin_group, none by default) are administrators.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>

#include "proto/protocol.h"

namespace kleak::service {

struct AccessPolicy {
    std::optional<gid_t> group;        // readers; unset: the group does not exist here
    std::optional<gid_t> admin_group;  // administrators besides root; unset: root only
    std::string group_name;            // for messages, e.g. "kleakd"
    std::string admin_group_name;      // "" when none is configured
};

enum class PeerRole { refused, reader, admin };

struct PeerVerdict {
    PeerRole role = PeerRole::refused;
    uid_t uid = static_cast<uid_t>(-1);
    std::string peer;    // "uid 1000 (pid 4242)"
    std::string reason;  // why not, when refused
    bool allowed() const { return role != PeerRole::refused; }
};

PeerVerdict check_peer(int connected_fd, const AccessPolicy& policy);

// The `forbidden` message for a reader that sent `op`: what it needs instead.
std::string admin_only_message(proto::Op op, const AccessPolicy& policy, const std::string& peer_uid);

// The gid of `group`, or nullopt if no such group exists.
std::optional<gid_t> lookup_group(const std::string& group);

}  // namespace kleak::service
