// PrintkLine <-> the JSON the `printk` query carries (proto/PROTOCOL.md).
#pragma once

#include <nlohmann/json.hpp>

#include "printk.h"

namespace kleak::core {

nlohmann::json printk_line_to_json(const PrintkLine& line);
// Throws nlohmann::json::exception on another shape.
PrintkLine printk_line_from_json(const nlohmann::json& json);

}  // namespace kleak::core
