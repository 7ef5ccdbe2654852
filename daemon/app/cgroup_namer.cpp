#include "app/cgroup_namer.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <fstream>
#include <sstream>

namespace kleak {

namespace {

// include/linux/exportfs.h: a kernfs node's handle is its 64-bit id.
constexpr int kFileidKernfs = 0xfe;

std::string read_text(const char* path) {
    std::ifstream in(path);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

}  // namespace

CgroupNamer::CgroupNamer() : mount_(core::cgroup2_mount_point(read_text("/proc/self/mountinfo"))) {
    if (!mount_.empty()) mount_fd_ = UniqueFd(::open(mount_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
}

void CgroupNamer::name_new(const core::ProcessTable& processes) {
    const auto& ids = processes.cgroups();
    for (; named_ < ids.size(); ++named_) names_.looked_up(ids[named_], look_up(ids[named_]));
}

std::optional<std::string> CgroupNamer::look_up(std::uint64_t id) const {
    if (!mount_fd_) return std::nullopt;
    alignas(file_handle) std::array<unsigned char, sizeof(file_handle) + sizeof id> buffer{};
    auto* handle = reinterpret_cast<file_handle*>(buffer.data());
    handle->handle_bytes = sizeof id;
    handle->handle_type = kFileidKernfs;
    std::memcpy(buffer.data() + sizeof(file_handle), &id, sizeof id);
    const UniqueFd fd(::open_by_handle_at(mount_fd_.get(), handle, O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd) return std::nullopt;  // ESTALE: removed already
    std::array<char, 4096> link{};
    const ssize_t n = ::readlink(("/proc/self/fd/" + std::to_string(fd.get())).c_str(), link.data(), link.size() - 1);
    if (n <= 0) return std::nullopt;
    return core::cgroup_relative_path(std::string_view(link.data(), static_cast<std::size_t>(n)), mount_);
}

}  // namespace kleak
