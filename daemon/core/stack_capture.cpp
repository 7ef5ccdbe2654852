#include "stack_capture.h"

#include <algorithm>
#include <unordered_set>

namespace kleak::core {

std::string_view stack_mode_name(StackMode mode) {
    switch (mode) {
        case StackMode::off: return "off";
        case StackMode::all: return "all";
        case StackMode::suspects: break;
    }
    return "suspects";
}

std::optional<StackMode> parse_stack_mode(std::string_view name) {
    for (const StackMode mode : {StackMode::off, StackMode::suspects, StackMode::all})
        if (stack_mode_name(mode) == name) return mode;
    return std::nullopt;
}

std::vector<std::uint64_t> capture_sites(const Tracker& tracker, const SiteVerdicts& verdicts,
                                         std::span<const std::string> functions, Symbolizer& symbolizer,
                                         std::size_t limit) {
    const auto& sites = tracker.sites();
    std::vector<std::pair<double, std::uint64_t>> growing;  // bytes per hour, call site
    std::vector<std::uint64_t> named;
    for (SiteId id = 0; id < sites.size(); ++id) {
        const SiteStats& site = sites[id];
        if (site.call_site == 0 || site.family == Family::page) continue;
        const SiteJudgement judgement = verdicts.judgement(id);
        if (judgement.verdict == Verdict::growing) {
            growing.emplace_back(judgement.growth_bytes_per_hour, site.call_site);
        } else if (!functions.empty()) {
            const Symbol symbol = symbolizer.resolve(site.call_site);
            if (std::find(functions.begin(), functions.end(), symbol.function) != functions.end())
                named.push_back(site.call_site);
        }
    }
    std::sort(growing.begin(), growing.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    std::vector<std::uint64_t> out;
    std::unordered_set<std::uint64_t> seen;
    const auto add = [&](std::uint64_t site) {
        if (out.size() < limit && seen.insert(site).second) out.push_back(site);
    };
    // Named sites first: a user asked for them; growing ones fill the rest.
    for (const std::uint64_t site : named) add(site);
    for (const auto& [rate, site] : growing) add(site);
    return out;
}

SiteBits site_bits(std::span<const std::uint64_t> sites) {
    SiteBits bits{};
    for (const std::uint64_t site : sites) {
        const std::uint32_t bit = site_bit(site);
        bits[bit / 64] |= std::uint64_t{1} << (bit % 64);
    }
    return bits;
}

}  // namespace kleak::core
