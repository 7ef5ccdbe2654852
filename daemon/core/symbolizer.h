// Call-site symbolization: kernel address -> "function+0xoff [module]".
// The table is parsed from /proc/kallsyms text (a stream, so tests use
// fixture files); loading is lazy and results are cached, because only the
// sites a report or query shows are ever resolved.
#pragma once

#include <cstdint>
#include <functional>
#include <istream>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace kleak::core {

struct Symbol {
    std::string function;  // empty when unknown
    std::uint64_t offset = 0;
    std::string module;    // empty for the core kernel

    bool known() const { return !function.empty(); }
};

// "0xffffffff81234567"
std::string hex_address(std::uint64_t address);

// "function+0x1a", "function+0x1a [module]", or "0xffffffff81234567" when unknown.
std::string format_site(std::uint64_t address, const Symbol& symbol);

class Symbolizer {
public:
    virtual ~Symbolizer() = default;
    virtual Symbol resolve(std::uint64_t address) = 0;
};

class KallsymsTable {
public:
    // Keeps text symbols (t T w W) only; call sites are code addresses.
    // between_chunks, if given, runs every kChunkLines lines: reading the
    // kernel's 122K symbols takes ~60 ms, and the daemon drains its rings
    // meanwhile (at full allocation rate they fill in less).
    static KallsymsTable parse(std::istream& in, const std::function<void()>& between_chunks = {});
    static constexpr std::size_t kChunkLines = 4096;

    // nullopt below the first symbol or past the last one (its size is unknown).
    std::optional<Symbol> lookup(std::uint64_t address) const;

    std::size_t size() const { return entries_.size(); }
    // True when the file listed symbols but every address was 0: kallsyms
    // hides addresses from readers without CAP_SYSLOG (kptr_restrict).
    bool addresses_hidden() const { return addresses_hidden_; }

private:
    // Once loaded the table stays for the daemon's life (a query may meet a
    // new call site at any time), so it is kept compact: all names in one
    // buffer, NUL-terminated, instead of a std::string each (4.8 against
    // 10.3 MiB of heap for the 122K text symbols of a 6.18 kernel).
    struct Entry {
        std::uint64_t address;
        std::uint32_t name;    // offset into names_
        std::uint32_t module;  // offset into names_, 0 = core kernel ("")
    };
    std::string_view name_at(std::uint32_t offset) const { return names_.data() + offset; }
    std::uint32_t add_name(std::string_view name);

    std::vector<Entry> entries_;
    std::string names_;
    bool addresses_hidden_ = false;
};

// Lazily loads a table through `loader` on the first resolve, caches answers.
//
// With `known_addresses` (the daemon passes every call site its tracker has
// seen), a miss resolves all of them in the same pass and then lets the table
// go: 122K symbols are ~5 MiB that a long-running daemon would otherwise hold
// for the handful of sites it ever shows, and a later miss (a call site new
// since the last pass) costs one more read of kallsyms (~60 ms) instead.
// Without it, or when the table came out empty (unreadable, or addresses
// hidden by kptr_restrict: rereading would find nothing more), the table is
// kept for the symbolizer's life.
class CachingSymbolizer final : public Symbolizer {
public:
    using Loader = std::function<KallsymsTable()>;
    using KnownAddresses = std::function<std::vector<std::uint64_t>()>;

    explicit CachingSymbolizer(Loader loader, KnownAddresses known_addresses = {})
        : loader_(std::move(loader)), known_addresses_(std::move(known_addresses)) {}
    Symbol resolve(std::uint64_t address) override;
    // With known_addresses: names every known address not named yet, in one
    // read (none if all are). The daemon calls it before a report or query
    // takes hold of the tracker, so the read need not freeze the tracker.
    // Returns whether it read.
    bool name_known();
    // The table, while it is held (never, between passes, with known_addresses).
    const KallsymsTable* table() const { return table_ ? &*table_ : nullptr; }
    // Times the loader ran.
    std::uint64_t loads() const { return loads_; }

private:
    // Reads the table if not held, names `address` and, with
    // known_addresses, every known address (listed after the read, so sites
    // that appeared meanwhile are named too), then lets the table go.
    void read_and_name(std::optional<std::uint64_t> address);

    Loader loader_;
    KnownAddresses known_addresses_;
    std::optional<KallsymsTable> table_;
    std::unordered_map<std::uint64_t, Symbol> cache_;
    std::uint64_t loads_ = 0;
};

// Answers from a fixed map, e.g. the symbols stored with a recording.
class FixedSymbolizer final : public Symbolizer {
public:
    explicit FixedSymbolizer(std::map<std::uint64_t, Symbol> symbols) : symbols_(std::move(symbols)) {}
    Symbol resolve(std::uint64_t address) override;

private:
    std::map<std::uint64_t, Symbol> symbols_;
};

}  // namespace kleak::core
