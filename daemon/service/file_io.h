// Small POSIX file helpers shared by the daemon's writers (snapshots, the
// printk log, the socket, recordings). They return errors as values: the
// event path and the periodic writers never throw.
//
// Where the daemon writes, it never follows a symbolic link in the last
// component: a directory it writes in is opened with O_NOFOLLOW, and the
// files in it are created, replaced and deleted with *at() calls under that
// directory's fd (O_NOFOLLOW, O_EXCL, renameat, unlinkat). A link planted in
// place of the directory or of one of its files (kleakd runs as root; the
// link could point at /etc/shadow) is refused with an error naming it,
// and its target is left alone. Links higher up the path (/var/run -> /run)
// are the administrator's and are followed.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kernel/unique_fd.h"

namespace kleak::service {

// "<action> <path>: <strerror(err)>"
std::string failure(std::string_view action, const std::filesystem::path& path, int err);

// "refusing to <action> <path>: it is a symbolic link (kleakd does not follow
// links where it writes; use the real path)"
std::string symlink_refusal(std::string_view action, const std::filesystem::path& path);

// failure(), or symlink_refusal() when `name` (under `directory_fd`, or a
// path with AT_FDCWD) is a symbolic link: what an open with O_NOFOLLOW that
// failed with `err` means to the user. `shown` is the path for the message.
std::string open_failure(std::string_view action, int directory_fd, const std::filesystem::path& name,
                         const std::filesystem::path& shown, int err);

// mkdir -p with `mode` (before the umask), creating only the missing
// components. nullopt, or an error naming the directory.
std::optional<std::string> make_directories(const std::filesystem::path& directory, mode_t mode = 0750);

// make_directories(), then opens the directory (O_DIRECTORY | O_NOFOLLOW)
// into `fd` for *at() calls. A symbolic link in its place is refused.
std::optional<std::string> open_directory(const std::filesystem::path& directory, UniqueFd& fd, mode_t mode = 0750);

// The names in the directory open at `directory_fd` (without . and ..);
// `shown` is its path for the message.
std::optional<std::string> list_directory(int directory_fd, const std::filesystem::path& shown,
                                          std::vector<std::string>& names);

// Writes all of `bytes`, retrying short writes and EINTR. 0 or an errno value.
int write_all(int fd, std::string_view bytes);

}  // namespace kleak::service
