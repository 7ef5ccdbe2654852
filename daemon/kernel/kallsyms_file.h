// The kallsyms symbolizer over a file path (/proc/kallsyms in production, a
// fixture in tests). The file is read on the first resolve, not before.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>

#include "core/symbolizer.h"

namespace kleak {

inline constexpr const char* kProcKallsyms = "/proc/kallsyms";

// An unreadable file, or one whose addresses are hidden (kptr_restrict), is
// logged once and yields an empty table: sites then print as hex addresses.
// known_addresses: see core::CachingSymbolizer (then the file is read again
// for each call site new since the last read, and the table is not kept).
// while_reading runs every few thousand lines of the file (see
// KallsymsTable::parse).
std::unique_ptr<core::CachingSymbolizer> make_kallsyms_symbolizer(
    std::filesystem::path path, core::CachingSymbolizer::KnownAddresses known_addresses = {},
    std::function<void()> while_reading = {});

}  // namespace kleak
