#include "printk_json.h"

namespace kleak::core {

nlohmann::json printk_line_to_json(const PrintkLine& line) {
    return {
        {"seq", line.seq},
        {"ts_ns", line.ts_ns},
        {"cpu", line.cpu},
        {"pid", line.tgid},
        {"tid", line.tid},
        {"level", line.level},
        {"truncated", line.truncated},
        {"text", line.text},
    };
}

PrintkLine printk_line_from_json(const nlohmann::json& json) {
    PrintkLine line;
    line.seq = json.at("seq").get<std::uint64_t>();
    line.ts_ns = json.at("ts_ns").get<std::uint64_t>();
    line.cpu = json.at("cpu").get<std::uint16_t>();
    line.tgid = json.at("pid").get<std::uint32_t>();
    line.tid = json.at("tid").get<std::uint32_t>();
    line.level = json.at("level").get<int>();
    line.truncated = json.at("truncated").get<bool>();
    line.text = json.at("text").get<std::string>();
    return line;
}

}  // namespace kleak::core
