#include "family_coverage.h"

#include <algorithm>
#include <sstream>
#include <string>

#include "kleak_abi.h"

namespace kleak::core {

void parse_meminfo(std::istream& in, KernelMemoryCounters& out) {
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream fields(line);
        std::string key, unit;
        std::uint64_t value = 0;
        if (!(fields >> key >> value)) continue;
        fields >> unit;
        const std::uint64_t bytes = unit == "kB" ? value * 1024 : value;
        if (key == "Percpu:") out.percpu_bytes = bytes;
        if (key == "VmallocUsed:") out.vmalloc_used_bytes = bytes;
    }
}

void parse_vmstat(std::istream& in, KernelMemoryCounters& out) {
    std::string line;
    std::uint64_t pgalloc = 0;
    bool any_pgalloc = false;
    while (std::getline(in, line)) {
        std::istringstream fields(line);
        std::string key;
        std::uint64_t value = 0;
        if (!(fields >> key >> value)) continue;
        if (key.rfind("pgalloc_", 0) == 0) {
            pgalloc += value;
            any_pgalloc = true;
        }
        if (key == "pgfree") out.pgfree_pages = value;
    }
    if (any_pgalloc) out.pgalloc_pages = pgalloc;
}

namespace {

nlohmann::json share(std::uint64_t part, std::optional<std::uint64_t> whole) {
    if (!whole || *whole == 0) return nullptr;
    return static_cast<double>(part) / static_cast<double>(*whole);
}

std::optional<std::uint64_t> delta(std::optional<std::uint64_t> now, std::optional<std::uint64_t> start) {
    if (!now || !start || *now < *start) return std::nullopt;
    return *now - *start;
}

nlohmann::json or_null(std::optional<std::uint64_t> v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); }

}  // namespace

nlohmann::json coverage_to_json(const Tracker& tracker, const CoverageInput& in) {
    nlohmann::json out = nlohmann::json::object();
    // percpu and vmalloc: kleakd's live bytes beside the kernel's /proc/meminfo figure.
    const auto against_meminfo = [&](Family family, std::optional<std::uint64_t> kernel_bytes) {
        const Totals t = tracker.family_totals(family);
        return nlohmann::json{{"traced", in.traced[static_cast<int>(family)]},
                              {"live", t.outstanding},
                              {"live_bytes", t.outstanding_bytes},
                              {"kernel_bytes", or_null(kernel_bytes)},
                              {"share", share(t.outstanding_bytes, kernel_bytes)}};
    };
    out["percpu"] = against_meminfo(Family::percpu, in.kernel_now.percpu_bytes);
    out["vmalloc"] = against_meminfo(Family::vmalloc, in.kernel_now.vmalloc_used_bytes);
    const Totals page = tracker.family_totals(Family::page);
    nlohmann::json p = {{"traced", in.traced[static_cast<int>(Family::page)]},
                        {"live", page.outstanding},
                        {"live_bytes", page.outstanding_bytes},
                        {"live_pages", page.outstanding_bytes / std::max<std::uint32_t>(in.page_size, 1)}};
    if (in.page_counts.size() >= KLEAK_PAGE_COUNTS) {
        const auto& c = in.page_counts;
        const std::uint64_t seen = c[KLEAK_PAGES_TRACKED] + c[KLEAK_PAGES_MOVABLE] + c[KLEAK_PAGES_SLAB] +
                                   c[KLEAK_PAGES_VMALLOC] + c[KLEAK_PAGES_PERCPU] + c[KLEAK_PAGES_NO_SITE];
        p["allocated_pages"] = {{"tracked", c[KLEAK_PAGES_TRACKED] + c[KLEAK_PAGES_NO_SITE]},
                                {"without_site", c[KLEAK_PAGES_NO_SITE]},
                                {"movable", c[KLEAK_PAGES_MOVABLE]},
                                {"slab", c[KLEAK_PAGES_SLAB]},
                                {"vmalloc", c[KLEAK_PAGES_VMALLOC]},
                                {"percpu", c[KLEAK_PAGES_PERCPU]},
                                {"total", seen}};
        p["freed_pages"] = c[KLEAK_PAGES_FREED];
        const auto kernel_alloc = delta(in.kernel_now.pgalloc_pages, in.kernel_at_start.pgalloc_pages);
        const auto kernel_free = delta(in.kernel_now.pgfree_pages, in.kernel_at_start.pgfree_pages);
        p["kernel_allocated_pages"] = or_null(kernel_alloc);
        p["kernel_freed_pages"] = or_null(kernel_free);
        p["allocated_share"] = share(seen, kernel_alloc);
        p["freed_share"] = share(c[KLEAK_PAGES_FREED], kernel_free);
    }
    out["page"] = std::move(p);
    return out;
}

}  // namespace kleak::core
