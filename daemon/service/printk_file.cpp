#include "service/printk_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <exception>
#include <functional>
#include <utility>
#include <vector>

#include "service/file_io.h"

namespace kleak::service {

namespace {

constexpr mode_t kFileMode = 0640;  // kernel messages can carry addresses and other sensitive detail

std::string rotated_name(unsigned n) { return std::string(kPrintkFileName) + "." + std::to_string(n); }

}  // namespace

std::optional<unsigned> parse_rotated_printk_name(std::string_view name) {
    if (!name.starts_with(kPrintkFileName)) return std::nullopt;
    name.remove_prefix(kPrintkFileName.size());
    if (name.size() < 2 || name.front() != '.' || name[1] == '0') return std::nullopt;  // ".0", ".01": not ours
    name.remove_prefix(1);
    unsigned n = 0;
    const auto [end, ec] = std::from_chars(name.data(), name.data() + name.size(), n);
    if (ec != std::errc{} || end != name.data() + name.size()) return std::nullopt;
    return n;
}

PrintkFile::PrintkFile(std::filesystem::path directory, std::uint64_t max_size, unsigned retention)
    : directory_(std::move(directory)),
      max_size_(std::max<std::uint64_t>(1, max_size)),
      retention_(std::max(1u, retention)) {}

void PrintkFile::reconfigure(std::filesystem::path directory, std::uint64_t max_size, unsigned retention) {
    if (directory != directory_) close_file();
    directory_ = std::move(directory);
    max_size_ = std::max<std::uint64_t>(1, max_size);
    retention_ = std::max(1u, retention);
}

std::optional<std::string> PrintkFile::append(std::string_view line) noexcept {
    try {
        return append_or_throw(line);
    } catch (const std::exception& e) {  // allocation failure: drop this line, try again with the next
        close_file();
        try {
            return "cannot append to " + path().string() + ": " + e.what();
        } catch (const std::exception&) {
            return std::nullopt;  // no memory even for the message
        }
    }
}

std::optional<std::string> PrintkFile::flush() noexcept {
    if (!fd_) return std::nullopt;
    if (::fdatasync(fd_.get()) == 0) return std::nullopt;
    const int err = errno;
    try {
        return failure("cannot sync", path(), err);
    } catch (const std::exception&) {
        return std::nullopt;  // cannot even build the message; nothing better to do
    }
}

std::optional<std::string> PrintkFile::append_or_throw(std::string_view line) {
    std::uint64_t size = 0;
    if (fd_ && !still_open_at_path(size)) close_file();
    if (!fd_) {
        if (auto error = open_file(size)) return error;
    }

    const std::uint64_t record_size = std::uint64_t{line.size()} + 1;
    std::optional<std::string> prune_error;
    // size + record_size > max_size_, written so it cannot overflow. An empty
    // file takes any line, so a line longer than max_size still gets written.
    if (size > 0 && (size >= max_size_ || record_size > max_size_ - size)) {
        auto error = rotate(prune_error);
        close_file();
        if (error) return error;
        if (auto open_error = open_file(size)) return open_error;
    }

    std::string record;
    record.reserve(record_size);
    record.append(line);
    record.push_back('\n');
    if (const int err = write_all(fd_.get(), record)) {
        // Best effort: cut a partly written line off again (ENOSPC), so the
        // next line does not start in the middle of one.
        // The write error is the one to report, so a failure here is ignored.
        [[maybe_unused]] const int truncated = ::ftruncate(fd_.get(), static_cast<off_t>(size));
        close_file();
        return failure("cannot write", path(), err);
    }
    return prune_error;
}

// Opens the directory and, under it, printk.log (creating both), and records
// which file it is and its size. Neither may be a symbolic link (file_io.h).
std::optional<std::string> PrintkFile::open_file(std::uint64_t& size) {
    if (auto error = open_directory(directory_, directory_fd_)) return error;
    const std::filesystem::path file = path();
    const std::string name(kPrintkFileName);
    UniqueFd fd(
        ::openat(directory_fd_.get(), name.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, kFileMode));
    if (!fd) return open_failure("open", directory_fd_.get(), name, file, errno);
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return failure("cannot stat", file, errno);
    device_ = st.st_dev;
    inode_ = st.st_ino;
    size = static_cast<std::uint64_t>(st.st_size);
    fd_ = std::move(fd);
    return std::nullopt;
}

// Whether printk.log is still the file we hold open (not deleted, not moved
// away and replaced), and if so its current size, which also notices an
// outside truncation (logrotate's copytruncate).
bool PrintkFile::still_open_at_path(std::uint64_t& size) const {
    struct stat st {};
    const std::string name(kPrintkFileName);
    if (::fstatat(directory_fd_.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return false;
    if (st.st_dev != device_ || st.st_ino != inode_) return false;
    size = static_cast<std::uint64_t>(st.st_size);
    return true;
}

// Shifts the rotated files up by one and printk.log to printk.log.1. Only
// names of the form printk.log.N are touched.
std::optional<std::string> PrintkFile::rotate(std::optional<std::string>& prune_error) const {
    // Names only, under the directory's fd: renameat and unlinkat move or
    // delete a link planted here, never what it points to.
    const int dir = directory_fd_.get();
    std::vector<std::string> names;
    if (auto error = list_directory(dir, directory_, names)) return error;
    std::vector<unsigned> rotated;  // the numbers that stay, to shift up
    for (const std::string& name : names) {
        const auto n = parse_rotated_printk_name(name);
        if (!n) continue;
        if (*n < retention_) {
            rotated.push_back(*n);
        } else if (::unlinkat(dir, name.c_str(), 0) != 0) {
            // Past retention once shifted. A failure here loses nothing, so
            // the rotation goes on and only reports it.
            const int err = errno;
            if (err != ENOENT && !prune_error) prune_error = failure("cannot delete", directory_ / name, err);
        }
    }

    std::sort(rotated.begin(), rotated.end(), std::greater<>());
    for (const unsigned n : rotated) {
        const std::string from = rotated_name(n);
        const std::string to = rotated_name(n + 1);
        if (::renameat(dir, from.c_str(), dir, to.c_str()) != 0) {
            const int err = errno;
            if (err != ENOENT)
                return failure("cannot rename " + (directory_ / from).string() + " to", directory_ / to, err);
        }
    }
    const std::string current(kPrintkFileName);
    const std::string first = rotated_name(1);
    if (::renameat(dir, current.c_str(), dir, first.c_str()) != 0) {
        const int err = errno;
        if (err != ENOENT) return failure("cannot rename " + path().string() + " to", directory_ / first, err);
    }
    return std::nullopt;
}

void PrintkFile::close_file() {
    fd_.reset();
    directory_fd_.reset();
    device_ = 0;
    inode_ = 0;
}

}  // namespace kleak::service
