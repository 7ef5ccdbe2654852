// Who allocated, as recorded at the allocation (KLEAK_PROCESS records,
// bpf/kleak_abi.h): each distinct (tgid, comm, cgroup id) a stream names gets
// a small number, its process id here, and an allocation that carries a stack
// gets the number its tgid had when it was made. So a process that exited
// keeps its name, and one that moved cgroup keeps the cgroup it allocated in
// for what it allocated there.
//
// Bounded: at most kMaxProcesses identities for the daemon's life (reset
// included: the BPF side does not record a process twice); past that, new
// processes fold into "no process" (0), counted in folded().
#pragma once

#include <absl/container/flat_hash_map.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kleak::core {

inline constexpr std::size_t kCommBytes = 16;  // KLEAK_COMM_BYTES
using Comm = std::array<char, kCommBytes>;

struct ProcessIdentity {
    std::uint32_t tgid = 0;
    // False for a tgid whose KLEAK_PROCESS record the stream lacks (a
    // recording from before ABI 6, a lost record, a map entry older than
    // this daemon): then comm and cgroup are read from /proc at the query.
    bool recorded = false;
    std::uint64_t cgroup_id = 0;  // the cgroup v2 directory's inode number
    Comm comm{};                  // NUL-padded
    std::string_view comm_text() const;
};

class ProcessTable {
public:
    // 2.5 MiB of identities at most (40 bytes each, with the tgid map).
    static constexpr std::uint32_t kMaxProcesses = 1u << 16;

    // A KLEAK_PROCESS record: tgid is now this comm in this cgroup.
    void recorded(std::uint32_t tgid, std::uint64_t cgroup_id, const Comm& comm);
    // The process id of an allocation of tgid, made now: 0 if none fits.
    std::uint32_t current(std::uint32_t tgid);

    // id from current(), nonzero.
    const ProcessIdentity& operator[](std::uint32_t id) const { return identities_[id - 1]; }
    std::size_t size() const { return identities_.size(); }
    std::uint64_t folded() const { return folded_; }
    // Distinct cgroup ids recorded so far, in first-seen order: the caller
    // names the ones past those it has named (app/cgroup_paths.h), once.
    const std::vector<std::uint64_t>& cgroups() const { return cgroups_; }
    std::size_t memory_bytes() const;

private:
    std::uint32_t add(const ProcessIdentity& identity);

    std::vector<ProcessIdentity> identities_;
    absl::flat_hash_map<std::uint32_t, std::uint32_t> current_;  // tgid -> its latest process id
    absl::flat_hash_map<std::uint64_t, bool> cgroup_seen_;
    std::vector<std::uint64_t> cgroups_;
    std::uint64_t folded_ = 0;
};

}  // namespace kleak::core
