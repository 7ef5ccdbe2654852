// The kernel's CPU list format, as /sys/devices/system/cpu/online and
// /sys/devices/system/cpu/possible print it: "0-3,8,10-11\n".
#pragma once

#include <optional>
#include <string_view>
#include <vector>

namespace kleak::core {

// The CPUs listed, ascending and distinct; nullopt when the text is not a
// CPU list (empty, a bad number, a range that runs backwards, above `limit`).
std::optional<std::vector<unsigned>> parse_cpu_list(std::string_view text, unsigned limit = 1u << 16);

}  // namespace kleak::core
