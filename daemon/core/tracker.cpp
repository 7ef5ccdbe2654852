#include "tracker.h"

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
    const SiteId here = intern(event.call_site, event.kind);
    if (is_alloc(event.kind)) {
        SiteStats& site = sites_[here];
        ++site.allocs;
        site.bytes_alloc += event.bytes_alloc;
        site.bytes_req += event.bytes_req;
        ++site.outstanding;
        site.outstanding_bytes += event.bytes_alloc;
        ++totals_.allocs;
        totals_.bytes_alloc += event.bytes_alloc;
        totals_.bytes_req += event.bytes_req;

        auto [it, inserted] = live_.try_emplace(event.ptr, OutstandingAllocation{event.ts_ns, here, event.bytes_alloc});
        if (!inserted) {
            // The previous allocation at this address was freed without us
            // seeing it (a lost record): retire it, then take its place.
            SiteStats& old = sites_[it->second.site];
            ++old.replaced;
            old.replaced_bytes += it->second.bytes_alloc;
            --old.outstanding;
            old.outstanding_bytes -= it->second.bytes_alloc;
            ++totals_.replaced;
            totals_.outstanding_bytes -= it->second.bytes_alloc;
            --totals_.outstanding;
            it->second = OutstandingAllocation{event.ts_ns, here, event.bytes_alloc};
        }
        ++totals_.outstanding;
        totals_.outstanding_bytes += event.bytes_alloc;
        return;
    }

    auto it = live_.find(event.ptr);
    if (it == live_.end()) {
        ++sites_[here].unmatched_frees;
        ++totals_.unmatched_frees;
        return;
    }
    const OutstandingAllocation entry = it->second;
    live_.erase(it);
    SiteStats& origin = sites_[entry.site];
    ++origin.frees;
    origin.bytes_freed += entry.bytes_alloc;
    --origin.outstanding;
    origin.outstanding_bytes -= entry.bytes_alloc;
    ++sites_[here].free_calls;
    ++totals_.frees;
    totals_.bytes_freed += entry.bytes_alloc;
    --totals_.outstanding;
    totals_.outstanding_bytes -= entry.bytes_alloc;
}

std::size_t Tracker::memory_bytes() const {
    // flat_hash_map: one slot plus one control byte per bucket.
    const std::size_t live = live_.capacity() * (sizeof(std::pair<std::uint64_t, OutstandingAllocation>) + 1);
    const std::size_t ids = site_ids_.capacity() * (sizeof(std::pair<std::uint64_t, SiteId>) + 1);
    return live + ids + sites_.capacity() * sizeof(SiteStats);
}

void Tracker::reset() {
    live_.clear();
    site_ids_.clear();
    sites_.clear();
    site_cache_.fill({});
    totals_ = Totals{};
}

}  // namespace kleak::core
