// Small POSIX file helpers shared by the daemon's writers (snapshots, the
// printk log, recordings). They return errors as values: the event path and
// the periodic writers never throw.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace kleak::service {

// "<action> <path>: <strerror(err)>"
std::string failure(std::string_view action, const std::filesystem::path& path, int err);

// mkdir -p with mode 0750 (before the umask), creating only the missing
// components. nullopt, or an error naming the directory.
std::optional<std::string> make_directories(const std::filesystem::path& directory);

// Writes all of `bytes`, retrying short writes and EINTR. 0 or an errno value.
int write_all(int fd, std::string_view bytes);

}  // namespace kleak::service
