#include "allocation_class.h"

namespace kleak::core {

ClassId ClassTable::intern_slow(std::uint64_t key, std::uint64_t origin, CacheSlot& slot, std::uint64_t cache_key) {
    auto it = ids_.find(std::pair{key, origin});
    if (it == ids_.end()) {
        // Full: the caller keeps this allocation outside the packed table.
        if (classes_.size() >= limit_) return kOverflowClass;
        it = ids_.emplace(std::pair{key, origin}, static_cast<ClassId>(classes_.size())).first;
        classes_.push_back({static_cast<SiteId>(key >> 32), static_cast<std::uint32_t>(key),
                            Origin{static_cast<std::uint32_t>(origin >> 32), static_cast<std::uint32_t>(origin)}});
        cache_keys_.push_back(cache_key);
    }
    slot = {key, origin, it->second + 1};
    return it->second;
}

std::size_t ClassTable::memory_bytes() const {
    // flat_hash_map: one slot plus one control byte per bucket.
    return ids_.capacity() * (sizeof(decltype(ids_)::value_type) + 1) +
           classes_.capacity() * sizeof(AllocationClass) + cache_keys_.capacity() * sizeof(std::uint64_t) +
           sizeof(cache_);
}

void ClassTable::clear() {
    cache_.fill({});
    ids_.clear();
    classes_.clear();
    cache_keys_.clear();
}

}  // namespace kleak::core
