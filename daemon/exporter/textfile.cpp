#include "exporter/textfile.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "service/file_io.h"

namespace kleak::exporter {

std::optional<std::string> write_textfile(const std::filesystem::path& path, std::string_view text) {
    if (path.filename().empty()) return "--textfile " + path.string() + " names a directory, not a file";
    const std::filesystem::path temp =
        path.parent_path() / ("." + path.filename().string() + ".tmp." + std::to_string(::getpid()));
    const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return service::failure("cannot create", temp, errno);
    int err = service::write_all(fd, text);
    // The collector runs as another user: readable by all, whatever the umask.
    if (err == 0 && ::fchmod(fd, 0644) != 0) err = errno;
    if (err == 0 && ::fsync(fd) != 0) err = errno;
    if (::close(fd) != 0 && err == 0) err = errno;
    if (err == 0 && ::rename(temp.c_str(), path.c_str()) != 0) {
        err = errno;
        ::unlink(temp.c_str());
        return service::failure("cannot rename " + temp.string() + " to", path, err);
    }
    if (err != 0) {
        ::unlink(temp.c_str());
        return service::failure("cannot write", temp, err);
    }
    return std::nullopt;
}

}  // namespace kleak::exporter
