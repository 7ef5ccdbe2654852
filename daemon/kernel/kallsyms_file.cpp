#include "kernel/kallsyms_file.h"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <utility>

namespace kleak {

std::unique_ptr<core::CachingSymbolizer> make_kallsyms_symbolizer(
    std::filesystem::path path, core::CachingSymbolizer::KnownAddresses known_addresses,
    std::function<void()> while_reading) {
    // Read once or many times (see the header): warn once either way.
    auto loader = [path = std::move(path), while_reading = std::move(while_reading), warned = false]() mutable {
        std::ifstream in(path);
        if (!in) {
            if (!std::exchange(warned, true))
                spdlog::warn("cannot read {}: {}; call sites will show as addresses", path.string(),
                             std::strerror(errno));
            return core::KallsymsTable{};
        }
        core::KallsymsTable table = core::KallsymsTable::parse(in, while_reading);
        if (table.addresses_hidden() && !std::exchange(warned, true)) {
            spdlog::warn("{} hides addresses (kernel.kptr_restrict); run as root to see function names", path.string());
        }
        return table;
    };
    return std::make_unique<core::CachingSymbolizer>(std::move(loader), std::move(known_addresses));
}

}  // namespace kleak
