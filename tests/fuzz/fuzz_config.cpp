// libFuzzer target: the config parser (daemon/config) on any file content.
// Checks its promises: settings iff no errors; every error has a message;
// an accepted config, written back by settings_to_json, parses to the same
// settings (what `kleakd --print-config` relies on).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "config/config.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace kleak::config;
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    const ConfigResult result = parse_config(text);
    if (result.settings.has_value() == !result.errors.empty()) std::abort();
    for (const ConfigError& error : result.errors) {
        if (error.message.empty()) std::abort();
    }
    (void)format_errors("/etc/kleakd/kleakd.conf", result.errors);
    if (result.settings) {
        const ConfigResult again = parse_config(settings_to_json(*result.settings).dump());
        if (!again.settings || !(*again.settings == *result.settings)) std::abort();
    }
    return 0;
}
