#include "symbolizer.h"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <string_view>

namespace kleak::core {

std::string hex_address(std::uint64_t address) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(address));
    return buf;
}

std::string format_site(std::uint64_t address, const Symbol& symbol) {
    if (!symbol.known()) return hex_address(address);
    char buf[32];
    std::snprintf(buf, sizeof buf, "+0x%llx", static_cast<unsigned long long>(symbol.offset));
    std::string out = symbol.function + buf;
    if (!symbol.module.empty()) out += " [" + symbol.module + "]";
    return out;
}

KallsymsTable KallsymsTable::parse(std::istream& in, const std::function<void()>& between_chunks) {
    KallsymsTable table;
    table.add_name("");  // offset 0: the core kernel's empty module name
    std::unordered_map<std::string, std::uint32_t> modules;
    bool any_listed = false;
    bool any_nonzero = false;
    std::string line;
    std::size_t lines = 0;
    while (std::getline(in, line)) {
        if (between_chunks && ++lines % kChunkLines == 0) between_chunks();
        // "ffffffff81000000 T _stext" or "ffffffffc0001000 t fn\t[module]"
        std::string_view rest(line);
        auto next_field = [&rest]() {
            const auto start = rest.find_first_not_of(" \t");
            if (start == std::string_view::npos) return std::string_view{};
            rest.remove_prefix(start);
            const auto end = rest.find_first_of(" \t");
            std::string_view field = rest.substr(0, end);
            rest.remove_prefix(end == std::string_view::npos ? rest.size() : end);
            return field;
        };
        const std::string_view addr_text = next_field();
        const std::string_view type = next_field();
        const std::string_view name = next_field();
        const std::string_view module = next_field();
        if (addr_text.empty() || type.size() != 1 || name.empty()) continue;
        std::uint64_t address = 0;
        const auto [ptr, ec] = std::from_chars(addr_text.data(), addr_text.data() + addr_text.size(), address, 16);
        if (ec != std::errc{} || ptr != addr_text.data() + addr_text.size()) continue;
        any_listed = true;
        if (address != 0) any_nonzero = true;
        const char t = type[0];
        if (t != 't' && t != 'T' && t != 'w' && t != 'W') continue;
        if (address == 0) continue;

        std::uint32_t module_index = 0;
        if (module.size() > 2 && module.front() == '[' && module.back() == ']') {
            std::string mod(module.substr(1, module.size() - 2));
            auto [it, inserted] = modules.try_emplace(std::move(mod), 0);
            if (inserted) it->second = table.add_name(it->first);
            module_index = it->second;
        }
        table.entries_.push_back({address, table.add_name(name), module_index});
    }
    table.addresses_hidden_ = any_listed && !any_nonzero;
    std::stable_sort(table.entries_.begin(), table.entries_.end(),
                     [](const Entry& a, const Entry& b) { return a.address < b.address; });
    table.entries_.shrink_to_fit();
    table.names_.shrink_to_fit();
    return table;
}

std::uint32_t KallsymsTable::add_name(std::string_view name) {
    const auto offset = static_cast<std::uint32_t>(names_.size());
    names_.append(name);
    names_.push_back('\0');
    return offset;
}

std::optional<Symbol> KallsymsTable::lookup(std::uint64_t address) const {
    auto it = std::upper_bound(entries_.begin(), entries_.end(), address,
                               [](std::uint64_t a, const Entry& e) { return a < e.address; });
    if (it == entries_.begin()) return std::nullopt;
    // Past the last symbol nothing bounds the function: say "unknown" rather
    // than blame a symbol that may end long before the address.
    if (it == entries_.end() && address != entries_.back().address) return std::nullopt;
    const Entry& e = *std::prev(it);
    return Symbol{std::string(name_at(e.name)), address - e.address, std::string(name_at(e.module))};
}

Symbol CachingSymbolizer::resolve(std::uint64_t address) {
    if (auto it = cache_.find(address); it != cache_.end()) return it->second;
    read_and_name(address);
    return cache_.at(address);
}

bool CachingSymbolizer::name_known() {
    if (!known_addresses_) return false;
    const std::vector<std::uint64_t> known = known_addresses_();
    if (std::all_of(known.begin(), known.end(), [this](std::uint64_t a) { return cache_.contains(a); })) return false;
    const std::uint64_t loads_before = loads_;
    read_and_name(std::nullopt);
    return loads_ != loads_before;
}

void CachingSymbolizer::read_and_name(std::optional<std::uint64_t> address) {
    if (!table_) {
        table_ = loader_();
        ++loads_;
    }
    auto name = [this](std::uint64_t a) {
        if (!cache_.contains(a)) cache_.emplace(a, table_->lookup(a).value_or(Symbol{}));
    };
    if (address) name(*address);
    if (known_addresses_) {
        for (const std::uint64_t known : known_addresses_()) name(known);
        if (table_->size() > 0) table_.reset();
    }
}

Symbol FixedSymbolizer::resolve(std::uint64_t address) {
    auto it = symbols_.find(address);
    return it == symbols_.end() ? Symbol{} : it->second;
}

}  // namespace kleak::core
