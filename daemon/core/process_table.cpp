#include "process_table.h"

#include <algorithm>

namespace kleak::core {

std::string_view ProcessIdentity::comm_text() const {
    return {comm.data(), static_cast<std::size_t>(std::find(comm.begin(), comm.end(), '\0') - comm.begin())};
}

std::uint32_t ProcessTable::add(const ProcessIdentity& identity) {
    if (identities_.size() >= kMaxProcesses) {
        ++folded_;
        current_.erase(identity.tgid);
        return 0;
    }
    identities_.push_back(identity);
    const auto id = static_cast<std::uint32_t>(identities_.size());
    current_[identity.tgid] = id;
    return id;
}

void ProcessTable::recorded(std::uint32_t tgid, std::uint64_t cgroup_id, const Comm& comm) {
    const auto it = current_.find(tgid);
    if (it != current_.end()) {
        ProcessIdentity& known = identities_[it->second - 1];
        // The same again (the BPF map evicted and re-recorded it): nothing new.
        if (known.recorded && known.cgroup_id == cgroup_id && known.comm == comm) return;
        // Allocations made before this record named nobody yet: they get it.
        if (!known.recorded) {
            known = {tgid, true, cgroup_id, comm};
            if (cgroup_seen_.try_emplace(cgroup_id, true).second) cgroups_.push_back(cgroup_id);
            return;
        }
    }
    if (add({tgid, true, cgroup_id, comm}) != 0 && cgroup_seen_.try_emplace(cgroup_id, true).second)
        cgroups_.push_back(cgroup_id);
}

std::uint32_t ProcessTable::current(std::uint32_t tgid) {
    const auto it = current_.find(tgid);
    if (it != current_.end()) [[likely]]
        return it->second;
    return add({tgid, false, 0, {}});
}

std::size_t ProcessTable::memory_bytes() const {
    return identities_.capacity() * sizeof(ProcessIdentity) +
           current_.capacity() * (sizeof(std::pair<std::uint32_t, std::uint32_t>) + 1) +
           cgroup_seen_.capacity() * (sizeof(std::pair<std::uint64_t, bool>) + 1) +
           cgroups_.capacity() * sizeof(std::uint64_t);
}

}  // namespace kleak::core
