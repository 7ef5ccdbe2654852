#include "service/file_io.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>

namespace kleak::service {

std::string failure(std::string_view action, const std::filesystem::path& path, int err) {
    return std::string(action) + " " + path.string() + ": " + std::strerror(err);
}

std::string symlink_refusal(std::string_view action, const std::filesystem::path& path) {
    return "refusing to " + std::string(action) + " " + path.string() +
           ": it is a symbolic link (kleakd does not follow links where it writes; use the real path)";
}

std::string open_failure(std::string_view action, int directory_fd, const std::filesystem::path& name,
                         const std::filesystem::path& shown, int err) {
    // O_NOFOLLOW reports a link as ELOOP (ENOTDIR with O_DIRECTORY on some
    // kernels); ELOOP can also mean a loop higher up, so look before saying so.
    struct stat st {};
    if ((err == ELOOP || err == ENOTDIR) && ::fstatat(directory_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        S_ISLNK(st.st_mode))
        return symlink_refusal(action, shown);
    return failure("cannot " + std::string(action), shown, err);
}

std::optional<std::string> make_directories(const std::filesystem::path& directory, mode_t mode) {
    if (::mkdir(directory.c_str(), mode) == 0 || errno == EEXIST) return std::nullopt;
    if (errno == ENOENT && directory.has_relative_path()) {
        if (auto error = make_directories(directory.parent_path(), mode)) return error;
        if (::mkdir(directory.c_str(), mode) == 0 || errno == EEXIST) return std::nullopt;
    }
    return failure("cannot create directory", directory, errno);
}

std::optional<std::string> open_directory(const std::filesystem::path& directory, UniqueFd& fd, mode_t mode) {
    if (auto error = make_directories(directory, mode)) return error;
    fd.reset(::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd) return open_failure("open directory", AT_FDCWD, directory, directory, errno);
    return std::nullopt;
}

std::optional<std::string> list_directory(int directory_fd, const std::filesystem::path& shown,
                                          std::vector<std::string>& names) {
    // fdopendir() takes the fd it is given: list a duplicate, positioned at the start.
    const int copy = ::openat(directory_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (copy < 0) return failure("cannot list", shown, errno);
    const std::unique_ptr<DIR, int (*)(DIR*)> dir(::fdopendir(copy), &::closedir);
    if (!dir) {
        const int err = errno;
        ::close(copy);
        return failure("cannot list", shown, err);
    }
    errno = 0;
    while (const dirent* entry = ::readdir(dir.get())) {
        const std::string_view name = entry->d_name;
        if (name != "." && name != "..") names.emplace_back(name);
        errno = 0;
    }
    if (errno != 0) return failure("cannot list", shown, errno);
    return std::nullopt;
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
