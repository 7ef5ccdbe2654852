#include "allocator_text.h"

#include <algorithm>
#include <limits>
#include <sstream>
#include <string>

namespace kleak::core {
namespace {

struct RolePattern {
    std::string_view name;  // a trailing '*' matches any suffix
    std::uint32_t role;
};

// Page allocator: the entry points and the helpers between them and the
// tracepoint (it fires in __alloc_pages / __alloc_frozen_pages), page_frag
// (a sub-allocator: its caller is the site, e.g. the network stack).
// vmalloc: its entry points and wrappers (kvmalloc, ioremap, execmem, vmap),
// and vm_area_alloc_pages / __vmalloc_area_node, which fill an area with
// pages. Slab: the allocation, refill and kmalloc_large paths. Percpu: chunk
// creation and population.
constexpr RolePattern kPatterns[] = {
    {"__alloc_pages", KLEAK_ROLE_PAGE_ALLOC},
    {"__alloc_frozen_pages", KLEAK_ROLE_PAGE_ALLOC},
    {"alloc_pages", KLEAK_ROLE_PAGE_ALLOC},
    {"alloc_frozen_pages", KLEAK_ROLE_PAGE_ALLOC},
    {"alloc_frozen_pages_nolock", KLEAK_ROLE_PAGE_ALLOC},
    {"alloc_pages_nolock", KLEAK_ROLE_PAGE_ALLOC},
    {"alloc_pages_mpol", KLEAK_ROLE_PAGE_ALLOC},
    {"alloc_pages_node", KLEAK_ROLE_PAGE_ALLOC},
    {"__alloc_pages_node", KLEAK_ROLE_PAGE_ALLOC},
    {"alloc_page_interleave", KLEAK_ROLE_PAGE_ALLOC},
    {"alloc_pages_preferred_many", KLEAK_ROLE_PAGE_ALLOC},
    {"__alloc_pages_slowpath", KLEAK_ROLE_PAGE_ALLOC},
    {"__alloc_pages_direct_compact", KLEAK_ROLE_PAGE_ALLOC},
    {"__alloc_pages_may_oom", KLEAK_ROLE_PAGE_ALLOC},
    {"get_page_from_freelist", KLEAK_ROLE_PAGE_ALLOC},
    {"__folio_alloc", KLEAK_ROLE_PAGE_ALLOC},
    {"folio_alloc", KLEAK_ROLE_PAGE_ALLOC},
    {"folio_alloc_mpol", KLEAK_ROLE_PAGE_ALLOC},
    {"vma_alloc_folio", KLEAK_ROLE_PAGE_ALLOC},
    {"__get_free_pages", KLEAK_ROLE_PAGE_ALLOC},
    {"get_free_pages", KLEAK_ROLE_PAGE_ALLOC},
    {"get_zeroed_page", KLEAK_ROLE_PAGE_ALLOC},
    {"alloc_pages_exact*", KLEAK_ROLE_PAGE_ALLOC},
    {"__alloc_pages_bulk", KLEAK_ROLE_PAGE_ALLOC},
    {"alloc_pages_bulk*", KLEAK_ROLE_PAGE_ALLOC},
    {"__page_frag_alloc_align", KLEAK_ROLE_PAGE_ALLOC},
    {"page_frag_alloc_align", KLEAK_ROLE_PAGE_ALLOC},
    {"__page_frag_cache_refill", KLEAK_ROLE_PAGE_ALLOC},
    {"page_frag_cache_refill", KLEAK_ROLE_PAGE_ALLOC},
    {"alloc_vmap_area", KLEAK_ROLE_VMALLOC},
    {"__get_vm_area_node", KLEAK_ROLE_VMALLOC},
    {"__get_vm_area_caller", KLEAK_ROLE_VMALLOC},
    {"get_vm_area", KLEAK_ROLE_VMALLOC},
    {"get_vm_area_caller", KLEAK_ROLE_VMALLOC},
    {"__vmalloc*", KLEAK_ROLE_VMALLOC},
    {"vmalloc", KLEAK_ROLE_VMALLOC},
    {"vmalloc_node", KLEAK_ROLE_VMALLOC},
    {"vmalloc_user", KLEAK_ROLE_VMALLOC},
    {"vmalloc_32*", KLEAK_ROLE_VMALLOC},
    {"vmalloc_huge*", KLEAK_ROLE_VMALLOC},
    {"vmalloc_array", KLEAK_ROLE_VMALLOC},
    {"vzalloc*", KLEAK_ROLE_VMALLOC},
    {"vcalloc", KLEAK_ROLE_VMALLOC},
    {"__vcalloc", KLEAK_ROLE_VMALLOC},
    {"vm_area_alloc_pages", KLEAK_ROLE_VMALLOC},
    {"__kvmalloc_node", KLEAK_ROLE_VMALLOC},
    {"kvmalloc_node", KLEAK_ROLE_VMALLOC},
    {"kvmalloc", KLEAK_ROLE_VMALLOC},
    {"kvrealloc", KLEAK_ROLE_VMALLOC},
    {"vmap", KLEAK_ROLE_VMALLOC},
    {"vm_map_ram", KLEAK_ROLE_VMALLOC},
    {"__ioremap_caller", KLEAK_ROLE_VMALLOC},
    {"ioremap*", KLEAK_ROLE_VMALLOC},
    {"execmem_alloc*", KLEAK_ROLE_VMALLOC},
    {"execmem_vmalloc", KLEAK_ROLE_VMALLOC},
    {"module_alloc", KLEAK_ROLE_VMALLOC},
    {"allocate_slab", KLEAK_ROLE_SLAB},
    {"new_slab", KLEAK_ROLE_SLAB},
    {"alloc_slab_page", KLEAK_ROLE_SLAB},
    {"___slab_alloc", KLEAK_ROLE_SLAB},
    {"__slab_alloc*", KLEAK_ROLE_SLAB},
    {"slab_alloc_node", KLEAK_ROLE_SLAB},
    {"kmem_cache_alloc*", KLEAK_ROLE_SLAB},
    {"__kmem_cache_alloc*", KLEAK_ROLE_SLAB},
    {"kmem_cache_refill_sheaf", KLEAK_ROLE_SLAB},
    {"kmem_cache_prefill_sheaf", KLEAK_ROLE_SLAB},
    {"__kmalloc*", KLEAK_ROLE_SLAB},
    {"___kmalloc_large_node", KLEAK_ROLE_SLAB},
    {"kmalloc_large*", KLEAK_ROLE_SLAB},
    {"kmalloc_trace", KLEAK_ROLE_SLAB},
    {"pcpu_alloc", KLEAK_ROLE_PERCPU},
    {"pcpu_populate_chunk", KLEAK_ROLE_PERCPU},
    {"pcpu_alloc_pages", KLEAK_ROLE_PERCPU},
    {"pcpu_create_chunk", KLEAK_ROLE_PERCPU},
    {"pcpu_balance_populated", KLEAK_ROLE_PERCPU},
    {"pcpu_balance_workfn", KLEAK_ROLE_PERCPU},
};

bool matches(std::string_view pattern, std::string_view name) {
    if (!pattern.empty() && pattern.back() == '*') {
        pattern.remove_suffix(1);
        return name.substr(0, pattern.size()) == pattern;
    }
    return name == pattern;
}

}  // namespace

std::uint32_t allocator_role(std::string_view name) {
    if (const auto dot = name.find('.'); dot != std::string_view::npos) name = name.substr(0, dot);
    constexpr std::string_view kNoprof = "_noprof";
    if (name.size() > kNoprof.size() && name.substr(name.size() - kNoprof.size()) == kNoprof)
        name.remove_suffix(kNoprof.size());
    for (const RolePattern& p : kPatterns)
        if (matches(p.name, name)) return p.role;
    return KLEAK_ROLE_NONE;
}

AllocatorText read_allocator_text(std::istream& kallsyms) {
    struct Text {
        std::uint64_t address;
        std::uint32_t role;
    };
    std::vector<Text> text;
    std::string line;
    bool any = false;
    while (std::getline(kallsyms, line)) {
        // "ffffffff81234567 T name" or "... t name\t[module]"
        const auto sp1 = line.find(' ');
        if (sp1 == std::string::npos || sp1 + 3 >= line.size() || line[sp1 + 2] != ' ') continue;
        const char type = line[sp1 + 1];
        if (type != 't' && type != 'T') continue;
        if (line.find('\t', sp1 + 3) != std::string::npos) continue;  // a module's
        any = true;
        std::uint64_t address = 0;
        try {
            address = std::stoull(line.substr(0, sp1), nullptr, 16);
        } catch (...) {
            continue;
        }
        if (address == 0) continue;
        text.push_back({address, allocator_role(std::string_view(line).substr(sp1 + 3))});
    }
    AllocatorText out;
    out.addresses_hidden = any && text.empty();
    std::sort(text.begin(), text.end(), [](const Text& a, const Text& b) { return a.address < b.address; });
    for (std::size_t i = 0; i + 1 < text.size(); ++i) {
        if (text[i].role == KLEAK_ROLE_NONE) continue;
        const std::uint64_t size = text[i + 1].address - text[i].address;
        if (size == 0) continue;  // an alias: the next entry at the same address has the range
        if (out.ranges.size() == KLEAK_TEXT_RANGES) {
            ++out.dropped;
            continue;
        }
        const std::uint32_t role = text[i].role;
        // Merge with the previous range when it ends here with the same role
        // (a function and its .cold part seldom are adjacent; aliases are).
        if (!out.ranges.empty() && out.ranges.back().role == role &&
            out.ranges.back().start + out.ranges.back().size == text[i].address &&
            out.ranges.back().size + size <= std::numeric_limits<std::uint32_t>::max()) {
            out.ranges.back().size += static_cast<std::uint32_t>(size);
            continue;
        }
        out.ranges.push_back({text[i].address,
                              static_cast<std::uint32_t>(std::min<std::uint64_t>(size, std::numeric_limits<std::uint32_t>::max())),
                              role});
    }
    return out;
}

std::vector<kleak_text_range> padded_text_table(const std::vector<kleak_text_range>& ranges) {
    std::vector<kleak_text_range> table(KLEAK_TEXT_RANGES, kleak_text_range{~0ULL, 0, KLEAK_ROLE_NONE});
    std::copy_n(ranges.begin(), std::min<std::size_t>(ranges.size(), KLEAK_TEXT_RANGES), table.begin());
    return table;
}

}  // namespace kleak::core
