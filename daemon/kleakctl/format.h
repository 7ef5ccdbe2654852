// Human-readable renderings of the daemon's results (--json prints them raw).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace kleak::ctl {

std::string format_leaks(const nlohmann::json& result);
// A `leaks --by comm|cgroup` result.
std::string format_leaks_by(const nlohmann::json& result);
std::string format_stats(const nlohmann::json& result);
std::string format_suspects(const nlohmann::json& result);
std::string format_history(const nlohmann::json& result);
std::string format_caches(const nlohmann::json& result);
std::string format_stacks(const nlohmann::json& result);
// A `capture` result: the stack capture now in force.
std::string format_capture(const nlohmann::json& capture);
std::string format_report(const nlohmann::json& result, std::size_t top);
std::string format_version(const nlohmann::json& result, const char* client_version);

}  // namespace kleak::ctl
