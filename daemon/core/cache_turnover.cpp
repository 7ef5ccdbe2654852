#include "cache_turnover.h"

#include <algorithm>

namespace kleak::core {

void CacheTurnover::sample(std::uint64_t now_ns, const absl::flat_hash_map<std::uint64_t, std::uint64_t>& cumulative) {
    const std::uint64_t t = now_ns - now_ns % 1'000'000;
    const std::uint64_t horizon = t > keep_ns_ ? t - keep_ns_ : 0;
    for (const auto& [cache, count] : cumulative) {
        std::deque<Point>& points = caches_[cache];
        if (points.empty() || points.back().cumulative != count) points.push_back({t, count});
        while (points.size() >= 2 && points[1].t_ns <= horizon) points.pop_front();
    }
}

std::uint64_t CacheTurnover::since(std::uint64_t cache, std::uint64_t since_ns) const {
    const auto it = caches_.find(cache);
    if (it == caches_.end() || it->second.empty()) return 0;
    const std::deque<Point>& points = it->second;
    // The newest point at or before since_ns holds the count then; none: the
    // cache had no unseen free yet.
    const auto after = std::upper_bound(points.begin(), points.end(), since_ns,
                                        [](std::uint64_t t, const Point& p) { return t < p.t_ns; });
    const std::uint64_t base = after == points.begin() ? 0 : std::prev(after)->cumulative;
    return points.back().cumulative >= base ? points.back().cumulative - base : 0;
}

std::size_t CacheTurnover::memory_bytes() const {
    std::size_t bytes = caches_.capacity() * (sizeof(std::pair<std::uint64_t, std::deque<Point>>) + 1);
    for (const auto& [cache, points] : caches_) bytes += points.size() * sizeof(Point);
    return bytes;
}

}  // namespace kleak::core
