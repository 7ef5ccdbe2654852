#include "service/fd_store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string_view>

namespace kleak::service {

PassedFds take_passed_fds() {
    PassedFds out;
    char** names = nullptr;
    const int n = sd_listen_fds_with_names(1, &names);  // 1: unset LISTEN_* for children
    for (int i = 0; i < n; ++i) {
        const std::string_view name = names != nullptr && names[i] != nullptr ? names[i] : "";
        UniqueFd fd(SD_LISTEN_FDS_START + i);
        if (is_handover_name(name))
            out.bpf.push_back({std::string(name), std::move(fd)});
        else
            (name == kStateFdName ? out.states : out.sockets).push_back(std::move(fd));
    }
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
