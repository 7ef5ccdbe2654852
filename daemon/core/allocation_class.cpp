#include "allocation_class.h"

namespace kleak::core {

ClassId ClassTable::intern_slow(std::uint64_t key, CacheSlot& slot, std::uint64_t cache_key) {
    auto it = ids_.find(key);
    if (it == ids_.end()) {
        // Full: the caller keeps this allocation outside the packed table.
        if (classes_.size() >= limit_) return kOverflowClass;
        it = ids_.emplace(key, static_cast<ClassId>(classes_.size())).first;
        classes_.push_back({static_cast<SiteId>(key >> 32), static_cast<std::uint32_t>(key)});
        cache_keys_.push_back(cache_key);
    }
    slot = {key, it->second + 1};
    return it->second;
}

std::size_t ClassTable::memory_bytes() const {
    // flat_hash_map: one slot plus one control byte per bucket.
    return ids_.capacity() * (sizeof(std::pair<std::uint64_t, ClassId>) + 1) +
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
