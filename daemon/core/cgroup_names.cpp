#include "cgroup_names.h"

#include <vector>

namespace kleak::core {

namespace {

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape(std::string_view field) {
    std::string out;
    for (std::size_t i = 0; i < field.size(); ++i) {
        if (field[i] == '\\' && i + 3 < field.size()) {
            const std::string_view digits = field.substr(i + 1, 3);
            if (digits.find_first_not_of("01234567") == std::string_view::npos) {
                out += static_cast<char>((digits[0] - '0') * 64 + (digits[1] - '0') * 8 + (digits[2] - '0'));
                i += 3;
                continue;
            }
        }
        out += field[i];
    }
    return out;
}

std::vector<std::string_view> fields(std::string_view line) {
    std::vector<std::string_view> out;
    while (!line.empty()) {
        const auto start = line.find_first_not_of(' ');
        if (start == std::string_view::npos) break;
        line.remove_prefix(start);
        const auto end = line.find(' ');
        out.push_back(line.substr(0, end));
        if (end == std::string_view::npos) break;
        line.remove_prefix(end);
    }
    return out;
}

}  // namespace

std::string cgroup2_mount_point(std::string_view text) {
    while (!text.empty()) {
        const auto end = text.find('\n');
        const std::vector<std::string_view> f = fields(text.substr(0, end));
        // id parent major:minor root mount-point options [optional...] - fstype source super-options
        for (std::size_t i = 6; i + 1 < f.size(); ++i) {
            if (f[i] != "-") continue;
            if (f[i + 1] == "cgroup2") return unescape(f[4]);
            break;
        }
        if (end == std::string_view::npos) break;
        text.remove_prefix(end + 1);
    }
    return {};
}

std::string cgroup_relative_path(std::string_view absolute, std::string_view mount) {
    while (mount.size() > 1 && mount.back() == '/') mount.remove_suffix(1);
    if (mount == "/" || !absolute.starts_with(mount)) return std::string(absolute);
    const std::string_view rest = absolute.substr(mount.size());
    if (rest.empty()) return "/";
    return rest.front() == '/' ? std::string(rest) : std::string(absolute);
}

void CgroupNames::looked_up(std::uint64_t id, std::optional<std::string> path) {
    if (paths_.size() >= kMaxPaths && !paths_.contains(id)) {
        ++unnamed_;
        return;
    }
    if (!path) ++removed_;
    paths_[id] = std::move(path);
}

std::string CgroupNames::path(std::uint64_t id) const {
    const auto it = paths_.find(id);
    if (it == paths_.end()) return "cgroup id " + std::to_string(id);
    if (!it->second) return "(removed) cgroup id " + std::to_string(id);
    return *it->second;
}

std::size_t CgroupNames::memory_bytes() const {
    std::size_t bytes = paths_.capacity() * (sizeof(std::pair<std::uint64_t, std::optional<std::string>>) + 1);
    for (const auto& [id, path] : paths_)
        if (path && path->capacity() > 15) bytes += path->capacity() + 1;
    return bytes;
}

}  // namespace kleak::core
