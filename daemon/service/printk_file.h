// The kernel log teed to disk: <directory>/printk.log, one formatted line per
// message, rotated by size like a syslog file (printk.log.1 is the newest
// rotated file, printk.log.N the oldest kept).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "kernel/unique_fd.h"

namespace kleak::service {

// "printk.log"
inline constexpr std::string_view kPrintkFileName = "printk.log";

// N for a rotated file's name "printk.log.N" (N >= 1, no leading zeros);
// nothing for any other name, printk.log itself included.
std::optional<unsigned> parse_rotated_printk_name(std::string_view name);

// Appends lines to the file, rotating it before it would pass max_size. One
// owner, one thread. Never throws: every failure is returned as a message
// naming the path and the reason, and the next call starts again from
// opening the file, so a directory that becomes writable later, or a file
// deleted or moved away (logrotate), is picked up without a restart.
class PrintkFile {
public:
    // No I/O until the first append. A retention of 0 counts as 1, a
    // max_size of 0 as 1.
    PrintkFile(std::filesystem::path directory, std::uint64_t max_size, unsigned retention);

    // Takes effect at the next append (SIGHUP reload). A new directory closes
    // the file: the next line starts <new directory>/printk.log, the old
    // files stay where they are.
    void reconfigure(std::filesystem::path directory, std::uint64_t max_size, unsigned retention);

    // Writes `line` plus '\n' with one write() to <directory>/printk.log,
    // creating the directory (0750) and the file (0640) when missing (neither
    // may be a symbolic link: file_io.h); the
    // file stays open (O_APPEND) between calls. Before a line that would take
    // the file past max_size it rotates: printk.log.(N-1) -> printk.log.N ...
    // printk.log -> printk.log.1, deleting rotated files numbered N or more
    // (N = retention), then starts a fresh printk.log. A line longer than
    // max_size is still written whole, alone in a fresh file.
    // If the path no longer names the open file (deleted, or renamed by
    // logrotate), the file is reopened first. `line` is written as given: the
    // caller formats and escapes it (core::format_printk_line).
    // Returns nothing on success. A failure to delete an old rotated file is
    // reported too, though the line was still written.
    std::optional<std::string> append(std::string_view line) noexcept;

    // fdatasync()s the open file (the daemon calls it at shutdown); nothing
    // to do when no file is open.
    std::optional<std::string> flush() noexcept;

    const std::filesystem::path& directory() const { return directory_; }
    std::filesystem::path path() const { return directory_ / kPrintkFileName; }

private:
    std::optional<std::string> append_or_throw(std::string_view line);
    std::optional<std::string> open_file(std::uint64_t& size);
    bool still_open_at_path(std::uint64_t& size) const;
    std::optional<std::string> rotate(std::optional<std::string>& prune_error) const;
    void close_file();

    std::filesystem::path directory_;
    std::uint64_t max_size_;
    unsigned retention_;
    UniqueFd directory_fd_;  // open with fd_: the directory its names are under
    UniqueFd fd_;
    dev_t device_ = 0;  // identity of the open file, to notice it was replaced
    ino_t inode_ = 0;
};

}  // namespace kleak::service
