// Frees of objects kleakd never saw allocated, per slab cache, over time.
//
// Allocations made before tracing started are invisible. While a cache's old
// objects are freed and new ones take their place (a process's vm areas, its
// open files, DAMON's regions), kleakd's count of the new objects' sites
// rises though the kernel holds no more: the site is filling up kleakd's
// view, not leaking. The frees of those old objects tell how much of a rise
// is that (verdict.h). Times are kept to the millisecond, as histories are.
#pragma once

#include <absl/container/flat_hash_map.h>

#include <cstdint>
#include <deque>

namespace kleak::core {

class CacheTurnover {
public:
    // Keeps what since() needs for starts up to keep_ns before the newest sample.
    explicit CacheTurnover(std::uint64_t keep_ns) : keep_ns_(keep_ns) {}

    // The tracker's cumulative counts (Tracker::unseen_frees_by_cache()) at now_ns.
    void sample(std::uint64_t now_ns, const absl::flat_hash_map<std::uint64_t, std::uint64_t>& cumulative);
    // Unseen frees of `cache` after the sample at or before since_ns, up to
    // the newest sample (all of them when since_ns is older than any kept).
    std::uint64_t since(std::uint64_t cache, std::uint64_t since_ns) const;
    void clear() { caches_.clear(); }
    std::size_t memory_bytes() const;

private:
    struct Point {
        std::uint64_t t_ns;
        std::uint64_t cumulative;
    };
    std::uint64_t keep_ns_;
    // A point per sample at which the count changed; the oldest kept is at
    // or before the keep horizon, the base for a start there.
    absl::flat_hash_map<std::uint64_t, std::deque<Point>> caches_;
};

}  // namespace kleak::core
