#include "slab_caches.h"

#include <cstdio>

namespace kleak::core {

namespace {

enum KmallocType : std::uint64_t { normal = 1, reclaim = 2, cgroup = 3, dma = 4, large = 5 };

constexpr const char* kPrefix[] = {"", "kmalloc-", "kmalloc-rcl-", "kmalloc-cg-", "dma-kmalloc-", "kmalloc-large"};

}  // namespace

std::uint64_t kmalloc_cache_key(std::uint32_t gfp_flags, std::uint32_t bytes_alloc) {
    if (bytes_alloc > kKmallocMaxCacheSize) return std::uint64_t{large} << 24;
    KmallocType type = normal;
    if (gfp_flags & kGfpDma)
        type = dma;
    else if (gfp_flags & kGfpReclaimable)
        type = reclaim;
    else if (gfp_flags & kGfpAccount)
        type = cgroup;
    return (std::uint64_t{type} << 24) | bytes_alloc;
}

std::uint32_t kmalloc_key_size(std::uint64_t key) {
    if (!is_kmalloc_cache_key(key)) return 0;
    const std::uint64_t type = key >> 24;
    return type == large || type >= std::size(kPrefix) ? 0 : static_cast<std::uint32_t>(key & 0xffffff);
}

std::string kmalloc_size_text(std::uint32_t size) {
    return size >= 1024 && size % 1024 == 0 ? std::to_string(size / 1024) + "k" : std::to_string(size);
}

std::string cache_name(std::uint64_t key, const CacheNames& names) {
    if (key == 0) return "";
    if (is_kmalloc_cache_key(key)) {
        const std::uint32_t size = kmalloc_key_size(key);
        if (size == 0) return kPrefix[large];
        return kPrefix[key >> 24] + kmalloc_size_text(size);
    }
    if (const auto it = names.find(key); it != names.end()) return it->second.name;
    char buf[24];
    std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(key));
    return buf;
}

bool cache_reclaimable(std::uint64_t key, const CacheNames& names) {
    if (is_kmalloc_cache_key(key)) return key >> 24 == reclaim;
    const auto it = names.find(key);
    return it != names.end() && it->second.reclaimable;
}

}  // namespace kleak::core
