// `kleakd serve` (and plain `kleakd`): the long-running daemon.
#pragma once

#include <filesystem>

#include "app/tracing_session.h"

namespace kleak {

inline constexpr const char* kDefaultConfigPath = "/etc/kleakd/kleakd.conf";

struct ServeCommand {
    std::filesystem::path config_path = kDefaultConfigPath;
    std::filesystem::path kallsyms = "/proc/kallsyms";
    SessionTiming timing;
};

int run_serve(const ServeCommand& command);

// `kleakd --check-config PATH`: 0 if valid, 1 with one line per error.
int run_check_config(const std::filesystem::path& path);

}  // namespace kleak
