#include "tracker.h"

#include <algorithm>

namespace kleak::core {

SiteId Tracker::intern(std::uint64_t call_site, EventKind kind) {
    SiteCacheSlot& slot = site_cache_[(call_site * 0x9E3779B97F4A7C15ULL) >> 54];  // top 10 bits
    if (slot.call_site == call_site && call_site != 0) return slot.id;
    auto [it, inserted] = site_ids_.try_emplace(call_site, static_cast<SiteId>(sites_.size()));
    if (inserted) {
        SiteStats& s = sites_.emplace_back();
        s.call_site = call_site;
        s.kind = kind;
    }
    slot = {call_site, it->second};
    return it->second;
}

void Tracker::apply(const Event& event) {
    if (event.kind == EventKind::printk) return;
    const SiteId here = intern(event.call_site, event.kind);
    if (is_alloc(event.kind)) {
        allocated(event, here);
    } else {
        freed(event, here);
    }
}

void Tracker::apply(std::span<const Event> events) {
    // Far enough ahead that the line arrives before its event is applied
    // (~100 ns of memory latency, a few ns to ~20 ns per event in cache), near
    // enough that the prefetched lines are not evicted first.
    constexpr std::size_t kAhead = 12;
    const std::size_t n = events.size();
    for (std::size_t i = 0; i < std::min(kAhead, n); ++i) live_.prefetch(events[i].ptr);
    for (std::size_t i = 0; i < n; ++i) {
        if (i + kAhead < n) live_.prefetch(events[i + kAhead].ptr);
        apply(events[i]);
    }
}

void Tracker::allocated(const Event& event, SiteId here) {
    SiteStats& site = sites_[here];
    ++site.allocs;
    site.bytes_alloc += event.bytes_alloc;
    site.bytes_req += event.bytes_req;
    ++site.outstanding;
    site.outstanding_bytes += event.bytes_alloc;
    ++totals_.allocs;
    totals_.bytes_alloc += event.bytes_alloc;
    totals_.bytes_req += event.bytes_req;

    const ClassId cls = classes_.intern(here, event.bytes_alloc);
    const std::uint64_t packed = pack_allocation(cls, birth_unit(event.ts_ns));
    auto [entry, inserted] = live_.try_emplace(event.ptr, packed);
    if (!inserted) {
        // The previous allocation at this address was freed without us
        // seeing it (a lost record): retire it, then take its place.
        const AllocationClass prior = class_of_entry(event.ptr, *entry);
        if (class_of(*entry) == kOverflowClass) overflow_.erase(event.ptr);
        *entry = packed;
        SiteStats& old = sites_[prior.site];
        ++old.replaced;
        old.replaced_bytes += prior.bytes_alloc;
        --old.outstanding;
        old.outstanding_bytes -= prior.bytes_alloc;
        ++totals_.replaced;
        totals_.outstanding_bytes -= prior.bytes_alloc;
        --totals_.outstanding;
    }
    if (cls == kOverflowClass) {
        ++class_overflows_;
        overflow_[event.ptr] = {here, event.bytes_alloc};
    }
    ++totals_.outstanding;
    totals_.outstanding_bytes += event.bytes_alloc;
}

void Tracker::freed(const Event& event, SiteId here) {
    std::uint64_t packed = 0;
    if (!live_.erase(event.ptr, &packed)) {
        ++sites_[here].unmatched_frees;
        ++totals_.unmatched_frees;
        return;
    }
    const AllocationClass origin_class = class_of_entry(event.ptr, packed);
    if (class_of(packed) == kOverflowClass) overflow_.erase(event.ptr);
    SiteStats& origin = sites_[origin_class.site];
    ++origin.frees;
    origin.bytes_freed += origin_class.bytes_alloc;
    --origin.outstanding;
    origin.outstanding_bytes -= origin_class.bytes_alloc;
    ++sites_[here].free_calls;
    ++totals_.frees;
    totals_.bytes_freed += origin_class.bytes_alloc;
    --totals_.outstanding;
    totals_.outstanding_bytes -= origin_class.bytes_alloc;
}

std::size_t Tracker::memory_bytes() const {
    // flat_hash_map: one slot plus one control byte per bucket.
    const std::size_t ids = site_ids_.capacity() * (sizeof(std::pair<std::uint64_t, SiteId>) + 1);
    const std::size_t overflow = overflow_.capacity() * (sizeof(std::pair<std::uint64_t, AllocationClass>) + 1);
    return live_.memory_bytes() + classes_.memory_bytes() + overflow + ids + sites_.capacity() * sizeof(SiteStats);
}

void Tracker::reset() {
    live_.clear();
    classes_.clear();
    overflow_.clear();
    class_overflows_ = 0;
    site_ids_.clear();
    sites_.clear();
    site_cache_.fill({});
    totals_ = Totals{};
}

}  // namespace kleak::core
