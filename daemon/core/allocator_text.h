// Where the allocators' own functions lie in kernel text, for the BPF
// programs that find a call site on the stack (bpf/kleak_site.h): read once
// at start from /proc/kallsyms text (a stream, so tests use fixtures).
#pragma once

#include <cstdint>
#include <istream>
#include <string_view>
#include <vector>

#include "kleak_site.h"

namespace kleak::core {

// The role of a kernel function by its name ("__alloc_pages_noprof",
// "__slab_alloc.isra.0"): the part before the first '.' and without the
// memory-profiling suffix "_noprof" is matched against a fixed list (names
// from 6.1 to 6.18). KLEAK_ROLE_NONE for any other function.
std::uint32_t allocator_role(std::string_view name);

// The functions with a role, sorted by address, each from its start to the
// next text symbol's (kallsyms gives no sizes), at most KLEAK_TEXT_RANGES of
// them (the first ones by address; `dropped` counts the rest). Only core
// kernel symbols: allocators are not modules.
struct AllocatorText {
    std::vector<kleak_text_range> ranges;
    std::size_t dropped = 0;
    bool addresses_hidden = false;  // kallsyms listed text but every address was 0
};
AllocatorText read_allocator_text(std::istream& kallsyms);

// The table as the BPF object holds it: every slot filled, unused ones at ~0.
std::vector<kleak_text_range> padded_text_table(const std::vector<kleak_text_range>& ranges);

}  // namespace kleak::core
