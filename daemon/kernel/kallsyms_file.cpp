#include "kernel/kallsyms_file.h"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>
#include <fstream>

namespace kleak {

std::unique_ptr<core::CachingSymbolizer> make_kallsyms_symbolizer(std::filesystem::path path) {
    return std::make_unique<core::CachingSymbolizer>([path = std::move(path)]() {
        std::ifstream in(path);
        if (!in) {
            spdlog::warn("cannot read {}: {}; call sites will show as addresses", path.string(), std::strerror(errno));
            return core::KallsymsTable{};
        }
        core::KallsymsTable table = core::KallsymsTable::parse(in);
        if (table.addresses_hidden()) {
            spdlog::warn("{} hides addresses (kernel.kptr_restrict); run as root to see function names", path.string());
        }
        return table;
    });
}

}  // namespace kleak
