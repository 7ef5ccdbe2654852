// Allocator families: slab (kmalloc, kmem_cache), page, percpu, vmalloc.
// Each has its own pointer space, and the tracker keeps them apart: a pfn's
// struct page, a __percpu pointer and a vmalloc address can equal a slab
// pointer (or each other) in value, and must never match its free.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

#include "kleak_abi.h"

namespace kleak::core {

enum class Family : std::uint8_t {
    slab = KLEAK_FAMILY_SLAB,
    page = KLEAK_FAMILY_PAGE,
    percpu = KLEAK_FAMILY_PERCPU,
    vmalloc = KLEAK_FAMILY_VMALLOC,
};
inline constexpr std::size_t kFamilyCount = KLEAK_FAMILY_COUNT;
inline constexpr std::array<Family, kFamilyCount> kFamilies{Family::slab, Family::page, Family::percpu,
                                                            Family::vmalloc};

// "slab", "page", "percpu", "vmalloc": the names every view and filter uses.
constexpr std::string_view family_name(Family family) {
    switch (family) {
    case Family::page: return "page";
    case Family::percpu: return "percpu";
    case Family::vmalloc: return "vmalloc";
    case Family::slab: break;
    }
    return "slab";
}

constexpr std::optional<Family> parse_family(std::string_view name) {
    for (const Family f : kFamilies)
        if (family_name(f) == name) return f;
    return std::nullopt;
}

// The tracker's key for a pointer (or a call site) of a family. Slab keys are
// the pointers themselves (kernel addresses: top four bits all ones), so the
// hot path pays nothing; the others carry their family in the top four bits
// (1, 2, 3), which no slab pointer has, over their low 60 bits. Within one
// family the low 60 bits tell values apart: kernel addresses (struct page,
// vmalloc) share their top four bits, __percpu pointers are offsets below
// 2^47 (x86-64).
inline constexpr unsigned kFamilyTagShift = 60;
inline constexpr std::uint64_t kFamilyValueMask = (std::uint64_t{1} << kFamilyTagShift) - 1;
constexpr std::uint64_t family_key(Family family, std::uint64_t value) {
    if (family == Family::slab) return value;
    return (std::uint64_t{static_cast<std::uint8_t>(family)} << kFamilyTagShift) | (value & kFamilyValueMask);
}

// Bytes of a page allocation of `order` with pages of 2^page_shift bytes,
// clamped to what a record's 32-bit size holds.
constexpr std::uint32_t page_bytes(unsigned order, unsigned page_shift) {
    const unsigned shift = order + page_shift;
    return shift >= 32 ? 0xffffffffU : std::uint32_t{1} << shift;
}

}  // namespace kleak::core
