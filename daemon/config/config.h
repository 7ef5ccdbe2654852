// The daemon's configuration file (/etc/kleakd/kleakd.conf): JSON with
// comments, every key optional. Reading it is a pipeline: text -> JSON ->
// typed-but-unchecked values -> validated Settings, collecting every problem
// with the dotted key path it concerns, so one run shows the user all of
// them. Nothing here logs or throws on bad input.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/sizes.h"
#include "core/stack_capture.h"

namespace kleak::config {

struct SocketSettings {
    std::filesystem::path path = "/run/kleakd/kleakd.sock";
    std::string group = "kleakd";  // may query (read-only ops)
    unsigned mode = 0660;
    std::string admin_group;  // may also change state (reset); "" = root only
    std::size_t max_clients = 64;  // connections at once, the last kept for root and admin_group
    std::chrono::seconds idle_timeout{60};  // closes a client that neither sends a request nor reads a reply
    std::uint64_t max_unread = std::uint64_t{64} << 20;  // reply bytes held for one client

    bool operator==(const SocketSettings&) const = default;
};

struct SnapshotSettings {
    std::filesystem::path directory = "/var/lib/kleakd/snapshots";
    std::chrono::seconds interval{60};
    unsigned retention = 60;  // snapshot files kept; older ones are deleted
    // How often the state image is stored with systemd (service/fd_store.h),
    // for a crash to resume from: what was traced since is lost.
    std::chrono::seconds checkpoint_interval{60};

    bool operator==(const SnapshotSettings&) const = default;
};

struct TracingSettings {
    std::uint64_t buffer_size = core::kDefaultBufferSize;  // per-CPU ring bytes
    bool kmalloc = true;
    bool kmem_cache = true;
    // The other families (README "Allocator families"): percpu and vmalloc
    // allocations are rare and cost nothing measurable; page allocations run
    // at page-cache rates and each tracked one reads a short stack, so pages
    // are opt-in.
    bool page = false;
    bool percpu = true;
    bool vmalloc = true;
    std::string attach = "auto";  // "auto", "tp_btf" or "raw_tp" (kernel/attach_mode.h)
    // Kernel stacks at start-up (core/stack_capture.h): "suspects", "all" or
    // "off"; `kleakctl stacks --capture` changes them at run time.
    std::string stacks = "suspects";
    // In "all" mode, a stack for 1 in 2^N pointers (0..32; 0: every one).
    std::uint32_t stack_sample_shift = core::kDefaultStackSampleShift;

    bool operator==(const TracingSettings&) const = default;
};

// The kernel log (printk:console): kept in memory for `kleakctl printk` and,
// optionally, teed to a size-rotated file.
struct PrintkSettings {
    bool enabled = true;
    std::size_t lines = 10000;  // lines kept in memory
    bool file_enabled = false;
    std::filesystem::path file_directory = "/var/lib/kleakd/printk";  // the file is <directory>/printk.log
    std::uint64_t file_max_size = 16 << 20;  // rotate before the file would pass this
    unsigned file_retention = 5;             // rotated files kept: printk.log.1 .. printk.log.N

    bool operator==(const PrintkSettings&) const = default;
};

// How sites are judged (core/verdict.h, README "Verdicts"): the daemon
// samples every site each `interval` (1s..10m) and judges it over the last
// `window` (at most 90 intervals); a growing site made a new high within
// `recent` (at least two intervals, less than the window), which is also the
// history a site needs to be judged at all; its trend must add `min_rise`
// allocations over the history judged. Left out of the file, window and
// recent follow the interval (config.cpp, settle_verdict_spans).
struct VerdictSettings {
    std::chrono::seconds interval{10};
    std::chrono::seconds window{15 * 60};
    std::chrono::seconds recent{60};
    unsigned min_rise = 4;

    bool operator==(const VerdictSettings&) const = default;
};
// Intervals tier 0 spans (core/site_history.h keeps 91 samples): the longest window.
inline constexpr unsigned kVerdictWindowSamples = 90;

struct Settings {
    SocketSettings socket;
    SnapshotSettings snapshots;
    TracingSettings tracing;
    PrintkSettings printk;
    VerdictSettings verdicts;
    std::string log_level = "info";  // an spdlog level name

    bool operator==(const Settings&) const = default;
};

struct ConfigError {
    std::string key;      // dotted path, e.g. "snapshots.retention", "tracing.allocators[1]"; "" for the whole file
    std::string message;  // what is wrong and what would be valid

    bool operator==(const ConfigError&) const = default;
};

struct ConfigResult {
    std::optional<Settings> settings;  // set iff errors is empty
    std::vector<ConfigError> errors;
};

// Pure: no I/O.
ConfigResult parse_config(std::string_view text);

// Reads `path` and parses it; an unreadable file is one error naming the path
// and the reason.
ConfigResult load_config(const std::filesystem::path& path);

// "<path>: <key>: <message>" ("<path>: <message>" for a file-level error),
// without a newline: one log line.
std::string format_error(const std::filesystem::path& path, const ConfigError& error);

// format_error() for each error, each line ending in a newline: for stderr.
std::string format_errors(const std::filesystem::path& path, const std::vector<ConfigError>& errors);

// The config in force, in the file's own format (parse_config accepts it back):
// mode as an octal string, interval in seconds ("60s"), buffer_size and
// printk.file.max_size as "8M"-style sizes.
nlohmann::json settings_to_json(const Settings& settings);

}  // namespace kleak::config
