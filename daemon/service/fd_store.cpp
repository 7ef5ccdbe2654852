#include "service/fd_store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <string_view>

namespace kleak::service {

namespace {

// The set's message: the identity, then one name a line, in fd order.
constexpr std::size_t kMaxSetFds = 253;  // SCM_MAX_FD

struct PeekedSet {
    std::string identity;
    std::vector<NamedFd> fds;
};

// One datagram: its text in `iov`, its fds' room in `control`.
msghdr datagram(iovec& iov, std::vector<char>& control) {
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    return msg;
}

// A copy of each fd of the message queued in `socket`, which stays queued.
PeekedSet peek_bpf_set(int socket) {
    std::vector<char> text(1 << 16);
    std::vector<char> control(CMSG_SPACE(kMaxSetFds * sizeof(int)));
    iovec iov{text.data(), text.size()};
    msghdr msg = datagram(iov, control);
    const ssize_t n = ::recvmsg(socket, &msg, MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    std::vector<UniqueFd> fds;
    for (cmsghdr* c = n >= 0 ? CMSG_FIRSTHDR(&msg) : nullptr; c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (std::size_t i = 0; i < count; ++i) {
            int fd = -1;
            std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            fds.emplace_back(fd);
        }
    }
    if (n <= 0) return {};
    std::vector<std::string> lines;
    std::string_view rest(text.data(), static_cast<std::size_t>(n));
    for (std::size_t at; (at = rest.find('\n')) != std::string_view::npos; rest.remove_prefix(at + 1))
        lines.emplace_back(rest.substr(0, at));
    lines.emplace_back(rest);
    // A truncated message (names without their fds, or the reverse) hands over nothing.
    if (lines.size() != fds.size() + 1 || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0) return {};
    PeekedSet set{lines[0], {}};
    for (std::size_t i = 0; i < fds.size(); ++i) set.fds.push_back({lines[i + 1], std::move(fds[i])});
    return set;
}

}  // namespace

PassedFds take_passed_fds() {
    PassedFds out;
    PeekedSet bpf;  // from one socket or several (over SCM_MAX_FD fds)
    char** names = nullptr;
    const int n = sd_listen_fds_with_names(1, &names);  // 1: unset LISTEN_* for children
    for (int i = 0; i < n; ++i) {
        const std::string_view name = names != nullptr && names[i] != nullptr ? names[i] : "";
        UniqueFd fd(SD_LISTEN_FDS_START + i);
        if (name == kBpfSetFdName) {
            PeekedSet part = peek_bpf_set(fd.get());  // systemd keeps the socket, with the message
            // Every part or none: a set missing one (its cpu_down link, say)
            // must not be adopted.
            if (part.identity.empty())
                out.bpf_refused = "a part of it could not be read (a truncated message)";
            else if (!bpf.identity.empty() && bpf.identity != part.identity)
                out.bpf_refused = "its parts name two different sets ('" + bpf.identity + "', '" + part.identity + "')";
            bpf.identity = part.identity;
            for (NamedFd& f : part.fds) bpf.fds.push_back(std::move(f));
        } else if (name == kRingTailFdName) {
            out.ring_tail = std::move(fd);  // one: each stop replaces it
        } else {
            (name == kStateFdName ? out.states : out.sockets).push_back(std::move(fd));
        }
    }
    if (!bpf.fds.empty() && out.bpf_refused.empty()) out.bpf = Handover(std::move(bpf.fds), std::move(bpf.identity));
    if (names != nullptr) {
        for (int i = 0; i < n; ++i) std::free(names[i]);
        std::free(names);
    }
    return out;
}

std::optional<std::vector<std::byte>> read_whole_fd(int fd, std::string& error) {
    std::vector<std::byte> out;
    std::byte chunk[1 << 16];
    for (off_t at = 0;;) {
        const ssize_t n = ::pread(fd, chunk, sizeof chunk, at);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            error = std::string("reading the stored state: ") + std::strerror(errno);
            return std::nullopt;
        }
        if (n == 0) return out;
        out.insert(out.end(), chunk, chunk + n);
        at += n;
    }
}

StateStore::StateStore() : active_(std::getenv("NOTIFY_SOCKET") != nullptr) {}

std::optional<std::string> StateStore::store(std::span<const std::byte> image) {
    if (!active_) return std::nullopt;
    // The old image goes first: systemd keeps fds by identity, not by name,
    // and would hand both back. A crash between the two loses the state (the
    // next start is fresh), never mixes two.
    return store_bytes(kStateFdName, image);
}

void StateStore::remove() { remove(kStateFdName); }

std::optional<std::string> StateStore::store_ring_tail(int fd) {
    if (!active_) return std::nullopt;
    remove(kRingTailFdName);
    return store_fd(kRingTailFdName, fd);
}

std::optional<std::string> StateStore::store_bpf_set(const std::string& identity,
                                                     const std::vector<std::pair<std::string, int>>& fds) {
    if (!active_) return std::nullopt;
    remove(kBpfSetFdName);  // the old set's links detach once nothing else holds them
    // One socket per SCM_MAX_FD fds (a host with over ~200 possible CPUs needs two).
    for (std::size_t first = 0; first < fds.size(); first += kMaxSetFds) {
        const std::size_t count = std::min(kMaxSetFds, fds.size() - first);
        int pair[2];
        if (::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, pair) != 0)
            return std::string("socketpair: ") + std::strerror(errno);
        const UniqueFd sender(pair[0]);
        const UniqueFd holder(pair[1]);
        std::string text = identity;
        std::vector<int> raw;
        for (std::size_t i = first; i < first + count; ++i) {
            text += "\n" + fds[i].first;
            raw.push_back(fds[i].second);
        }
        std::vector<char> control(CMSG_SPACE(raw.size() * sizeof(int)));
        iovec iov{text.data(), text.size()};
        msghdr msg = datagram(iov, control);
        cmsghdr* c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(raw.size() * sizeof(int));
        std::memcpy(CMSG_DATA(c), raw.data(), raw.size() * sizeof(int));
        std::optional<std::string> error;
        if (::sendmsg(sender.get(), &msg, MSG_NOSIGNAL) < 0)
            error = std::string("queuing the BPF fds in their socket: ") + std::strerror(errno);
        else
            error = store_fd(kBpfSetFdName, holder.get());
        if (error) {
            remove(kBpfSetFdName);  // part of a set is of no use to the next process
            return error;
        }
    }
    return std::nullopt;
}

std::optional<std::string> StateStore::store_bytes(const std::string& name, std::span<const std::byte> bytes) {
    if (!active_) return std::nullopt;
    UniqueFd fd(::memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!fd) return std::string("memfd_create: ") + std::strerror(errno);
    for (std::size_t done = 0; done < bytes.size();) {
        const ssize_t n = ::write(fd.get(), bytes.data() + done, bytes.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return "writing the memfd " + name + ": " + std::strerror(errno);
        done += static_cast<std::size_t>(n);
    }
    ::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL);
    remove(name);
    return store_fd(name, fd.get());  // systemd holds its own copy of the fd; ours closes here
}

std::optional<std::string> StateStore::store_fd(const std::string& name, int fd) {
    if (!active_) return std::nullopt;
    const int fds[1] = {fd};
    const std::string message = "FDSTORE=1\nFDNAME=" + name;
    const int r = sd_pid_notify_with_fds(0, 0, message.c_str(), fds, 1);
    if (r < 0) return "handing " + name + " to systemd (FDSTORE=1): " + std::strerror(-r);
    if (r == 0) return "NOTIFY_SOCKET vanished: " + name + " was not stored";
    return std::nullopt;
}

void StateStore::remove(const std::string& name) {
    if (!active_) return;
    const std::string message = "FDSTOREREMOVE=1\nFDNAME=" + name;
    sd_pid_notify(0, 0, message.c_str());
}

}  // namespace kleak::service
