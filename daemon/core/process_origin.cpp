#include "process_origin.h"

namespace kleak::core {

std::string cgroup_v2_path(std::string_view text) {
    while (!text.empty()) {
        const auto end = text.find('\n');
        const std::string_view line = text.substr(0, end);
        if (line.starts_with("0::")) return std::string(line.substr(3));
        if (end == std::string_view::npos) break;
        text.remove_prefix(end + 1);
    }
    return {};
}

std::string systemd_unit(std::string_view path) {
    std::string unit;
    while (!path.empty()) {
        const auto slash = path.find('/');
        const std::string_view part = path.substr(0, slash);
        if (part.ends_with(".service") || part.ends_with(".scope")) unit = part;
        if (slash == std::string_view::npos) break;
        path.remove_prefix(slash + 1);
    }
    return unit;
}

}  // namespace kleak::core
