// systemd's file descriptor store (FileDescriptorStoreMax= in kleakd.service):
// the daemon hands systemd a memfd holding its state image
// (core/state_image.h) on a clean stop and at every checkpoint, and gets it
// back, among the fds passed at start (LISTEN_FDS, with names), when it is
// restarted: `systemctl restart`, Restart=on-failure after a crash or a
// watchdog kill, the package's restart after an upgrade. `systemctl stop`
// and a reboot empty the store. Without systemd (NOTIFY_SOCKET unset, as for
// `kleakd serve` from a shell) nothing is passed and storing is a no-op.
//
// The same store keeps the BPF links and maps (kernel/bpf_handover.h), so
// that the programs stay attached while no kleakd runs. They go in as one
// fd: a datagram socket with one message queued in it, carrying every link
// and map (SCM_RIGHTS) and their names and identity. systemd drops an fd it
// takes for one it holds already, and without kcmp(2) (a kernel without
// CONFIG_KCMP, a container that denies it to PID 1) it compares inodes: every
// BPF map and link shares one anonymous inode, so only the first of each
// would be kept. A socket has an inode of its own; the next process reads
// the message with MSG_PEEK, which leaves it queued for the one after.
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kernel/bpf_handover.h"
#include "kernel/unique_fd.h"

namespace kleak::service {

// The name the state memfd is stored under (FDNAME=).
inline constexpr const char* kStateFdName = "kleakd-state";
// The name of the socket holding the BPF links and maps.
inline constexpr const char* kBpfSetFdName = "kleakd-bpf";
// The name of the memfd holding a stopping kleakd's ring tail (kernel/ring_tail.h).
inline constexpr const char* kRingTailFdName = "kleakd-ring-tail";

struct PassedFds {
    std::vector<UniqueFd> sockets;  // kleakd.socket's (socket activation)
    std::vector<UniqueFd> states;   // stored state memfds: one, unless a store raced a crash
    Handover bpf;                   // the links and maps in the kleakd-bpf socket, if any
    UniqueFd ring_tail;             // what the previous kleakd read after its last drain, if any
    // Why a stored BPF set was not taken ("" when none was stored or it was):
    // a part unreadable, or parts of two sets.
    std::string bpf_refused;
};

// Takes every fd systemd passed, sorted by name, and unsets LISTEN_* so
// children do not inherit them. Empty when not started by systemd.
PassedFds take_passed_fds();

// The whole content of a stored memfd, or an error.
std::optional<std::vector<std::byte>> read_whole_fd(int fd, std::string& error);

class StateStore {
public:
    StateStore();
    bool active() const { return active_; }
    // A fresh memfd with `image` replaces the one stored before (sealed:
    // nobody can change it once stored). nullopt on success, else the error.
    std::optional<std::string> store(std::span<const std::byte> image);
    // Empties the store (a `reset` forgets the state: a restart must too).
    void remove();

    // The BPF links and maps (by name) and their identity, replacing the
    // set stored before: nullopt on success, else the error.
    std::optional<std::string> store_bpf_set(const std::string& identity,
                                             const std::vector<std::pair<std::string, int>>& fds);

    // The tail of the rings (kernel/ring_tail.h, sealed), for the next
    // start only: it takes it out again (remove_ring_tail()).
    std::optional<std::string> store_ring_tail(int fd);
    void remove_ring_tail() { remove(kRingTailFdName); }

private:
    // A sealed memfd holding `bytes`, under `name`, replacing the one before.
    std::optional<std::string> store_bytes(const std::string& name, std::span<const std::byte> bytes);
    std::optional<std::string> store_fd(const std::string& name, int fd);
    void remove(const std::string& name);

    bool active_ = false;
};

}  // namespace kleak::service
