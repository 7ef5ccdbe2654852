#include "service/peer_access.h"

#include <grp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

namespace kleak::service {

namespace {

// The peer's supplementary groups as the kernel saw them when it connected
// (SO_PEERGROUPS, Linux 4.13): unlike /proc/PID/status or getgrouplist(),
// neither a pid reused since nor an /etc/group edited since can change them.
std::vector<gid_t> peer_groups(int fd) {
    std::vector<gid_t> groups(64);
    socklen_t len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    int rc = ::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len);
    if (rc != 0 && errno == ERANGE) {
        groups.resize(len / sizeof(gid_t));
        rc = ::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len);
    }
    if (rc != 0) return {};
    groups.resize(len / sizeof(gid_t));
    return groups;
}

bool in_group(const ucred& cred, const std::vector<gid_t>& groups, std::optional<gid_t> group) {
    return group && (cred.gid == *group || std::find(groups.begin(), groups.end(), *group) != groups.end());
}

}  // namespace

std::optional<gid_t> lookup_group(const std::string& group) {
    // A group with many members needs more than any fixed buffer: ERANGE
    // asks for a larger one (it is not "no such group").
    for (std::size_t size = 16384; size <= (64u << 20); size *= 4) {
        std::vector<char> buf(size);
        struct group entry {};
        struct group* found = nullptr;
        const int err = ::getgrnam_r(group.c_str(), &entry, buf.data(), buf.size(), &found);
        if (err == ERANGE) continue;
        if (err != 0 || found == nullptr) return std::nullopt;
        return found->gr_gid;
    }
    return std::nullopt;
}

PeerVerdict check_peer(int fd, const AccessPolicy& policy) {
    PeerVerdict verdict;
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
        verdict.reason = std::string("cannot read peer credentials: ") + std::strerror(errno);
        return verdict;
    }
    verdict.uid = cred.uid;
    verdict.peer = "uid " + std::to_string(cred.uid) + " (pid " + std::to_string(cred.pid) + ")";
    if (cred.uid == 0 || cred.uid == ::geteuid()) {
        verdict.role = PeerRole::admin;
        return verdict;
    }
    const std::vector<gid_t> groups = policy.group || policy.admin_group ? peer_groups(fd) : std::vector<gid_t>{};
    if (in_group(cred, groups, policy.admin_group)) {
        verdict.role = PeerRole::admin;
    } else if (in_group(cred, groups, policy.group)) {
        verdict.role = PeerRole::reader;
    } else if (policy.group) {
        verdict.reason = "only root and members of the socket's group " + policy.group_name + " may query kleakd";
    } else {
        verdict.reason =
            "only root may query kleakd (the socket's group " + policy.group_name + " does not exist on this host)";
    }
    return verdict;
}

std::string admin_only_message(proto::Op op, const AccessPolicy& policy, const std::string& peer_uid) {
    const std::string what = "op \"" + std::string(proto::op_name(op)) + "\" changes the daemon's state: ";
    if (policy.admin_group)
        return what + "only root and members of group " + policy.admin_group_name +
               " (socket.admin_group) may send it; " + peer_uid + " is neither";
    if (!policy.admin_group_name.empty())
        return what + "only root may send it (socket.admin_group " + policy.admin_group_name +
               " does not exist on this host); " + peer_uid + " is not root";
    return what + "only root may send it (set socket.admin_group to let a group send it too); " + peer_uid +
           " is not root";
}

}  // namespace kleak::service
