// Addresses of slab objects freed unseen by kfree, until an allocation takes
// the address again and so names the cache the freed object was in.
//
// kmem_cache_free names its cache (6.1+), so its unseen frees are counted per
// cache directly (cache_turnover.h); kfree names none. But a slab slot is
// only ever reused by its own cache (while its slab lives), and a freed slot
// is taken again soon (SLUB hands out the latest freed first): the next
// allocation at the address tells the cache. Without that, every kmalloc
// site that replaces objects made before tracing (a process's fd table, a
// pipe) looks like it grows while kleakd is young.
#pragma once

#include <absl/container/flat_hash_set.h>

#include <array>
#include <cstdint>

namespace kleak::core {

class UnseenFreeSlots {
public:
    // Slots older than two generations are forgotten: a slot not reused by
    // then has probably left its cache (its slab freed).
    static constexpr std::uint64_t kGenerationNs = 30'000'000'000;
    // Per generation; more are dropped (counted).
    static constexpr std::size_t kMaxPerGeneration = 65'536;

    void freed(std::uint64_t ptr, std::uint64_t now_ns);
    // Whether ptr was freed unseen and not yet taken; forgets it. The filter
    // keeps this to one load and a bit test for almost every allocation.
    bool take(std::uint64_t ptr) {
        if (!(filter_[bit(ptr) / 64] >> (bit(ptr) % 64) & 1)) [[likely]]
            return false;
        return take_slow(ptr);
    }
    // Unseen frees not kept (a generation full): their caches' sites may
    // look like they grow while kleakd is young.
    std::uint64_t dropped() const { return dropped_; }
    std::size_t memory_bytes() const;
    void clear();

private:
    // 2^20 bits (128 KiB) for at most 2 x 65,536 slots: under 1 in 8 set
    // when both generations are full, so take() stays one load and a test.
    static constexpr unsigned kFilterBits = 20;
    static std::uint64_t bit(std::uint64_t ptr) { return ((ptr >> 3) * 0x9E3779B97F4A7C15ULL) >> (64 - kFilterBits); }
    bool take_slow(std::uint64_t ptr);
    void rotate(std::uint64_t now_ns);

    std::array<absl::flat_hash_set<std::uint64_t>, 2> generations_;  // [0] newest
    std::uint64_t generation_start_ns_ = 0;
    std::array<std::uint64_t, (1u << kFilterBits) / 64> filter_{};   // a bit per hash of either generation's slots
    std::uint64_t dropped_ = 0;
};

}  // namespace kleak::core
