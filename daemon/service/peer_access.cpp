#include "service/peer_access.h"

#include <grp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

namespace kleak::service {

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
    verdict.peer = "uid " + std::to_string(cred.uid) + " (pid " + std::to_string(cred.pid) + ")";
    if (cred.uid == 0 || cred.uid == ::geteuid()) {
        verdict.allowed = true;
        return verdict;
    }
    if (policy.group) {
        if (cred.gid == *policy.group) {
            verdict.allowed = true;
            return verdict;
        }
        // Supplementary groups of the peer process, as the kernel saw them
        // when it connected.
        std::vector<gid_t> groups(64);
        socklen_t glen = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
        int rc = ::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen);
        if (rc != 0 && errno == ERANGE) {
            groups.resize(glen / sizeof(gid_t));
            rc = ::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen);
        }
        if (rc == 0) {
            groups.resize(glen / sizeof(gid_t));
            if (std::find(groups.begin(), groups.end(), *policy.group) != groups.end()) {
                verdict.allowed = true;
                return verdict;
            }
        }
        verdict.reason = "only root and members of the socket's group may query kleakd";
    } else {
        verdict.reason = "only root may query kleakd (the socket group does not exist on this host)";
    }
    return verdict;
}

}  // namespace kleak::service
