#include "service/file_io.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace kleak::service {

namespace {
constexpr mode_t kDirectoryMode = 0750;
}

std::string failure(std::string_view action, const std::filesystem::path& path, int err) {
    return std::string(action) + " " + path.string() + ": " + std::strerror(err);
}

std::optional<std::string> make_directories(const std::filesystem::path& directory) {
    if (::mkdir(directory.c_str(), kDirectoryMode) == 0 || errno == EEXIST) return std::nullopt;
    if (errno == ENOENT && directory.has_relative_path()) {
        if (auto error = make_directories(directory.parent_path())) return error;
        if (::mkdir(directory.c_str(), kDirectoryMode) == 0 || errno == EEXIST) return std::nullopt;
    }
    return failure("cannot create directory", directory, errno);
}

int write_all(int fd, std::string_view bytes) {
    while (!bytes.empty()) {
        const ssize_t n = ::write(fd, bytes.data(), bytes.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return 0;
}

}  // namespace kleak::service
