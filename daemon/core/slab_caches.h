// Which slab cache an allocation came from, as one 64-bit key per class:
//
//   kmem_cache_alloc (6.1+)  the `struct kmem_cache *` its record carries: a
//                            kernel address, named once per cache by the
//                            daemon (kleak__cache_info) into CacheNames;
//   kmalloc                  its size and gfp flags decide the cache, as the
//                            kernel's kmalloc_type() does: dma-kmalloc-N
//                            (__GFP_DMA), kmalloc-rcl-N (__GFP_RECLAIMABLE),
//                            kmalloc-cg-N (__GFP_ACCOUNT), else kmalloc-N; above
//                            8 KiB the page allocator ("kmalloc-large");
//   0                        unknown (kmem_cache_alloc before 6.1).
//
// A kmalloc key is below 2^32 and a kernel address is not, so they never meet.
// kmalloc through kmem_buckets (memdup_user-N, msg_msg-N: 6.11+) and the
// random kmalloc caches (CONFIG_RANDOM_KMALLOC_CACHES) are counted in
// kmalloc-N: the size and flags do not tell them apart, so reconciliation
// compares kmalloc caches per size (cache_reconciliation.h).
#pragma once

#include <absl/container/flat_hash_map.h>

#include <cstdint>
#include <string>

#include "family.h"

namespace kleak::core {

// The kernel's gfp bits kmalloc_type() reads; their values are the same from
// 4.x to 6.18 (___GFP_ACCOUNT became bit 22 of an enum in 6.10, same value).
inline constexpr std::uint32_t kGfpDma = 0x01;
inline constexpr std::uint32_t kGfpReclaimable = 0x10;
inline constexpr std::uint32_t kGfpAccount = 0x400000;
// KMALLOC_MAX_CACHE_SIZE with SLUB and 4 KiB pages.
inline constexpr std::uint32_t kKmallocMaxCacheSize = 8192;

std::uint64_t kmalloc_cache_key(std::uint32_t gfp_flags, std::uint32_t bytes_alloc);
constexpr bool is_kmalloc_cache_key(std::uint64_t key) { return key != 0 && key < (std::uint64_t{1} << 32); }
// vmalloc and percpu have no caches: each whole family is one for the
// frees of objects made before tracing (cache_turnover.h); 0 for the others.
// Keys between the kmalloc ones and kernel addresses, the family in the low byte.
constexpr std::uint64_t family_turnover_key(Family family) {
    if (family != Family::vmalloc && family != Family::percpu) return 0;
    return (std::uint64_t{1} << 32) | static_cast<std::uint8_t>(family);
}
constexpr bool is_family_turnover_key(std::uint64_t key) { return key >> 8 == std::uint64_t{1} << 24; }
// The slab size of a kmalloc key; 0 for kmalloc-large and non-kmalloc keys.
std::uint32_t kmalloc_key_size(std::uint64_t key);
// The kernel's size suffix: "8" .. "512", then "1k" .. "8k".
std::string kmalloc_size_text(std::uint32_t size);

// What the kernel says about one kmem_cache (kleak_cache_info).
struct CacheInfo {
    std::string name;
    std::uint32_t object_size = 0;
    bool reclaimable = false;
};
// Kernel cache address -> what it is: filled by the daemon, read by queries.
using CacheNames = absl::flat_hash_map<std::uint64_t, CacheInfo>;

// The name /proc/slabinfo shows for a key: derived for kmalloc keys, looked
// up for addresses ("0x..." until named), "" for 0.
std::string cache_name(std::uint64_t key, const CacheNames& names);
// Whether the kernel reclaims the cache under memory pressure.
bool cache_reclaimable(std::uint64_t key, const CacheNames& names);

}  // namespace kleak::core
