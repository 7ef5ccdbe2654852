// An outstanding allocation packed into 64 bits, so the tracker's table entry
// is 16 bytes (pointer + this) instead of 24:
//
//   bits 63..24  birth time in units of 2^20 ns (1.048576 ms), 40 bits: 36
//                years of CLOCK_MONOTONIC, saturating beyond;
//   bits 23..0   the allocation's class: an interned (allocating site,
//                bytes_alloc, origin) triple. A site allocates in few sizes
//                (one per slab cache it hits, plus page counts for large
//                kmallocs), so classes stay few; the origin (kernel stack and
//                process) is set only for allocations that carry a stack
//                (README, "Stacks"), so it multiplies the classes of those
//                sites alone, and costs no byte per table entry (an interned
//                class costs 16 bytes more). 2^24 - 1 classes fit, and the last id marks
//                an allocation whose class did not fit (the tracker keeps
//                those exactly in a side map and counts them).
//
// Time in the high bits makes "born in a unit before U" one unsigned compare
// on the packed value, which the `min_age` scan does a million times.
//
// Rounding: only the unit is kept, so an allocation made at ts_ns is reported
// as born at the *last* nanosecond of its unit (rounded_birth_ns). Ages
// computed from it are never more than the true age and at most 1.05 ms less:
// a `min_age` query never counts an allocation younger than asked, and may
// leave out one that crossed the threshold within the last 1.05 ms.
#pragma once

#include <absl/container/flat_hash_map.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace kleak::core {

using SiteId = std::uint32_t;
using ClassId = std::uint32_t;

inline constexpr unsigned kClassBits = 24;
inline constexpr std::uint64_t kClassMask = (std::uint64_t{1} << kClassBits) - 1;
inline constexpr ClassId kOverflowClass = static_cast<ClassId>(kClassMask);
inline constexpr std::uint32_t kMaxClasses = kOverflowClass;  // ids 0 .. 2^24 - 2

inline constexpr unsigned kBirthUnitShift = 20;
inline constexpr std::uint64_t kBirthUnitNs = std::uint64_t{1} << kBirthUnitShift;
inline constexpr std::uint64_t kMaxBirthUnit = (std::uint64_t{1} << (64 - kClassBits)) - 1;

constexpr std::uint64_t birth_unit(std::uint64_t ts_ns) { return std::min(ts_ns >> kBirthUnitShift, kMaxBirthUnit); }

// The latest ts_ns an allocation stored with this unit can have been made at.
constexpr std::uint64_t latest_birth_ns(std::uint64_t unit) { return (unit << kBirthUnitShift) | (kBirthUnitNs - 1); }

// What the tracker reports as the birth time of an allocation made at ts_ns.
constexpr std::uint64_t rounded_birth_ns(std::uint64_t ts_ns) { return latest_birth_ns(birth_unit(ts_ns)); }

// How many units (counting from 0) lie wholly at or before born_before_ns: an
// allocation is surely born by then iff its unit is below this.
constexpr std::uint64_t units_wholly_by(std::uint64_t born_before_ns) {
    if (born_before_ns >= latest_birth_ns(kMaxBirthUnit)) return kMaxBirthUnit + 1;
    return (born_before_ns + 1) >> kBirthUnitShift;
}

constexpr std::uint64_t pack_allocation(ClassId cls, std::uint64_t unit) { return (unit << kClassBits) | cls; }
constexpr ClassId class_of(std::uint64_t packed) { return static_cast<ClassId>(packed & kClassMask); }
constexpr std::uint64_t unit_of(std::uint64_t packed) { return packed >> kClassBits; }

// Who made an allocation, when its record says (a stack was captured): the
// kernel stack (1 + its id in the BPF stack map) and the process (its id in
// the tracker's ProcessTable, process_table.h: a tgid with its comm and
// cgroup at the allocation). {0, 0}: not known.
// Classes are never freed, and a class per (stack, process) grows with every
// short-lived process allocating at a site whose stacks are captured: past
// this many classes, new ones keep their stack but not their process (at most
// ~5 MiB of classes; `leaks --by comm|cgroup` then counts them as unknown).
inline constexpr std::size_t kProcessClassLimit = std::size_t{1} << 16;

struct Origin {
    std::uint32_t stack = 0;
    std::uint32_t process = 0;
    std::uint64_t key() const { return (std::uint64_t{stack} << 32) | process; }
    bool operator==(const Origin&) const = default;
};

struct AllocationClass {
    SiteId site;
    std::uint32_t bytes_alloc;
    Origin origin{};
};

// Interns (site, bytes_alloc, origin) triples as dense class ids, up to a limit. Each
// class also keeps the slab cache key (slab_caches.h) of its first allocation:
// a site that allocates one size from two caches is counted in the first.
class ClassTable {
public:
    explicit ClassTable(std::uint32_t limit = kMaxClasses) : limit_(std::min(limit, kMaxClasses)) {}

    // The pair's class, interned on first sight; kOverflowClass once `limit`
    // classes exist and this pair is not one of them.
    ClassId intern(SiteId site, std::uint32_t bytes_alloc, std::uint64_t cache_key = 0, Origin origin = {}) {
        const std::uint64_t key = (std::uint64_t{site} << 32) | bytes_alloc;
        const std::uint64_t from = origin.key();
        CacheSlot& slot = cache_[((key ^ (from * 0xC2B2AE3D27D4EB4FULL)) * 0x9E3779B97F4A7C15ULL) >> (64 - kCacheBits)];
        if (slot.id_plus_one != 0 && slot.key == key && slot.origin == from) return slot.id_plus_one - 1;
        return intern_slow(key, from, slot, cache_key);
    }

    const AllocationClass& operator[](ClassId id) const { return classes_[id]; }
    std::uint64_t cache_key(ClassId id) const { return cache_keys_[id]; }
    std::size_t size() const { return classes_.size(); }
    std::size_t memory_bytes() const;
    void clear();

private:
    // Most events come from a few hot (site, size) pairs: a direct-mapped
    // cache answers them without probing ids_. id_plus_one 0 marks a free slot.
    // 4096 slots (64 KiB): a busy host has thousands of classes (see the site
    // cache in tracker.h for the measurement).
    static constexpr unsigned kCacheBits = 12;
    struct CacheSlot {
        std::uint64_t key = 0;
        std::uint64_t origin = 0;
        std::uint32_t id_plus_one = 0;
    };
    ClassId intern_slow(std::uint64_t key, std::uint64_t origin, CacheSlot& slot, std::uint64_t cache_key);

    std::array<CacheSlot, std::size_t{1} << kCacheBits> cache_{};
    absl::flat_hash_map<std::pair<std::uint64_t, std::uint64_t>, ClassId> ids_;  // (site, bytes), origin
    std::vector<AllocationClass> classes_;
    std::vector<std::uint64_t> cache_keys_;  // parallel to classes_
    std::uint32_t limit_;
};

}  // namespace kleak::core
