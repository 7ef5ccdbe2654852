#include "tracker.h"

#include "kleak_abi.h"
#include "slab_caches.h"

#include <algorithm>

namespace kleak::core {

SiteId Tracker::intern(std::uint64_t call_site, EventKind kind) {
    // Keyed by family too: the frees of pages, percpu and vmalloc areas all
    // come from call site 0, one site per family.
    const Family family = family_of(kind);
    const std::uint64_t key = family_key(family, call_site);
    SiteCacheSlot& slot = site_cache_[(key * 0x9E3779B97F4A7C15ULL) >> (64 - kSiteCacheBits)];
    if (slot.call_site == key && key != 0) return slot.id;
    auto [it, inserted] = site_ids_.try_emplace(key, static_cast<SiteId>(sites_.size()));
    if (inserted) {
        SiteStats& s = sites_.emplace_back();
        s.call_site = call_site;
        s.kind = kind;
        s.family = family;
    }
    slot = {key, it->second};
    return it->second;
}

Totals Tracker::family_totals(Family family) const {
    Totals t;
    for (const SiteStats& s : sites_)
        if (s.family == family) add_site_counts(t, s);
    return t;
}

void add_site_counts(Totals& t, const SiteStats& s) {
    t.allocs += s.allocs;
    t.frees += s.frees;
    t.bytes_alloc += s.bytes_alloc;
    t.bytes_req += s.bytes_req;
    t.bytes_freed += s.bytes_freed;
    t.unmatched_frees += s.unmatched_frees;
    t.replaced += s.replaced;
    t.outstanding += s.outstanding;
    t.outstanding_bytes += s.outstanding_bytes;
}

void Tracker::apply(const Event& event) {
    if (event.ts_ns >= next_expiry_ns_) [[unlikely]]
        expire_displaced(event.ts_ns);
    if (event.kind == EventKind::printk) return;
    if (event.kind == EventKind::process) [[unlikely]]
        return processes_.recorded(event.tgid, event.cache, process_comm(event));
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
    site.reclaimable |= (event.gfp_flags & KLEAK_GFP_RECLAIMABLE) != 0;
    site.bytes_alloc += event.bytes_alloc;
    site.bytes_req += event.bytes_req;
    ++site.outstanding;
    site.outstanding_bytes += event.bytes_alloc;
    ++totals_.allocs;
    totals_.bytes_alloc += event.bytes_alloc;
    totals_.bytes_req += event.bytes_req;

    const std::uint64_t cache_key =
        event.kind == EventKind::kmalloc ? kmalloc_cache_key(event.gfp_flags, event.bytes_alloc) : event.cache;
    if (cache_key != 0 && unseen_kfree_slots_.take(event.ptr)) [[unlikely]]
        ++unseen_frees_by_cache_[cache_key];
    const ClassId cls = classes_.intern(here, event.bytes_alloc, cache_key, origin_of(event));
    if (cls != kOverflowClass) [[likely]] {
        if (cls >= class_live_.size()) class_live_.resize(cls + 1);
        ++class_live_[cls];
    }
    const std::uint64_t unit = birth_unit(event.ts_ns);
    const std::uint64_t packed = pack_allocation(cls, unit);
    if (ages_indexed()) {
        if (cls != kOverflowClass) [[likely]]
            ages_.add(cls, unit);
        else
            ages_.clear();  // incomplete from now on (class_overflows_ below): queries scan until reset()
    }
    auto [entry, inserted] = live_.try_emplace(event.ptr, packed);
    if (!inserted) [[unlikely]] {
        // The previous allocation at this address was freed, and its free is
        // lost or still to come: it steps aside, and the new one takes its place.
        displace(event.ptr, *entry, event.ts_ns);
        *entry = packed;
    }
    if (cls == kOverflowClass) {
        ++class_overflows_;
        overflow_[event.ptr] = {here, event.bytes_alloc, origin_of(event)};
    }
    ++totals_.outstanding;
    totals_.outstanding_bytes += event.bytes_alloc;
}

Origin Tracker::origin_of(const Event& event) {
    if (event.stack == 0) [[likely]]
        return {};
    if (classes_.size() >= kProcessClassLimit) {
        ++processless_allocations_;
        return {event.stack, 0};
    }
    return {event.stack, processes_.current(event.tgid)};
}

void Tracker::freed(const Event& event, SiteId here) {
    if (!displaced_.empty() && freed_displaced(event, here)) [[unlikely]]
        return;
    std::uint64_t packed = 0;
    if (!live_.erase(event.ptr, &packed)) {
        ++sites_[here].unmatched_frees;
        ++totals_.unmatched_frees;
        if (event.cache != 0)
            ++unseen_frees_by_cache_[event.cache];
        else if (event.kind == EventKind::kfree)
            unseen_kfree_slots_.freed(event.ptr, event.ts_ns);
        else if (const std::uint64_t key = family_turnover_key(family_of(event.kind)); key != 0)
            ++unseen_frees_by_cache_[key];
        return;
    }
    const AllocationClass origin_class = class_of_entry(event.ptr, packed);
    if (class_of(packed) == kOverflowClass) overflow_.erase(event.ptr);
    unindex(class_of(packed), unit_of(packed));
    credit_free(origin_class, class_of(packed), here);
}

void Tracker::credit_free(const AllocationClass& origin_class, ClassId origin_id, SiteId here) {
    if (origin_id != kOverflowClass) --class_live_[origin_id];
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

void Tracker::count_replaced(const AllocationClass& prior, ClassId prior_id) {
    if (prior_id != kOverflowClass) --class_live_[prior_id];
    SiteStats& old = sites_[prior.site];
    ++old.replaced;
    old.replaced_bytes += prior.bytes_alloc;
    --old.outstanding;
    old.outstanding_bytes -= prior.bytes_alloc;
    ++totals_.replaced;
    totals_.outstanding_bytes -= prior.bytes_alloc;
    --totals_.outstanding;
}

void Tracker::displace(std::uint64_t ptr, std::uint64_t packed, std::uint64_t by_ns) {
    const Displaced d{class_of_entry(ptr, packed), class_of(packed), unit_of(packed), by_ns};
    if (class_of(packed) == kOverflowClass) overflow_.erase(ptr);
    displaced_[ptr].push_back(d);
    ++displaced_entries_;
    if (displacements_.empty()) next_expiry_ns_ = by_ns + kDisplacedHorizonNs;
    displacements_.push_back({by_ns, ptr});
}

// A free that may have happened before the allocation that displaced one of
// its pointer's entries frees the oldest such entry; one surely after them
// all (the newest allocation's own free) goes on to the live table.
bool Tracker::freed_displaced(const Event& event, SiteId here) {
    const auto it = displaced_.find(event.ptr);
    if (it == displaced_.end()) return false;
    auto& list = it->second;
    const std::uint64_t earliest = earliest_free_ns(event);
    const auto claimed =
        std::find_if(list.begin(), list.end(), [earliest](const Displaced& d) { return earliest < d.displaced_at_ns; });
    if (claimed == list.end()) return false;
    credit_free(claimed->cls, claimed->class_id, here);
    unindex(claimed->class_id, claimed->birth_unit);
    ++totals_.reordered_frees;
    forget_displaced(it, claimed);
    return true;
}

void Tracker::forget_displaced(DisplacedMap::iterator it, absl::InlinedVector<Displaced, 1>::iterator entry) {
    it->second.erase(entry);
    --displaced_entries_;
    if (it->second.empty()) displaced_.erase(it);
}

void Tracker::expire_displaced(std::uint64_t now_ns) {
    while (!displacements_.empty() && displacements_.front().at_ns + kDisplacedHorizonNs <= now_ns) {
        const Displacement due = displacements_.front();
        displacements_.pop_front();
        // Gone already when a late free claimed it.
        const auto it = displaced_.find(due.ptr);
        if (it == displaced_.end()) continue;
        const auto entry = std::find_if(it->second.begin(), it->second.end(),
                                        [&due](const Displaced& d) { return d.displaced_at_ns == due.at_ns; });
        if (entry == it->second.end()) continue;
        count_replaced(entry->cls, entry->class_id);
        unindex(entry->class_id, entry->birth_unit);
        forget_displaced(it, entry);
    }
    next_expiry_ns_ = displacements_.empty() ? std::numeric_limits<std::uint64_t>::max()
                                             : displacements_.front().at_ns + kDisplacedHorizonNs;
}

std::size_t Tracker::memory_bytes() const {
    // flat_hash_map: one slot plus one control byte per bucket.
    const std::size_t ids = site_ids_.capacity() * (sizeof(std::pair<std::uint64_t, SiteId>) + 1);
    const std::size_t side_maps = overflow_.capacity() * (sizeof(std::pair<std::uint64_t, AllocationClass>) + 1) +
                                  displaced_.capacity() * (sizeof(DisplacedMap::value_type) + 1) +
                                  displacements_.size() * sizeof(Displacement) +
                                  unseen_frees_by_cache_.capacity() * (2 * sizeof(std::uint64_t) + 1) +
                                  unseen_kfree_slots_.memory_bytes();
    return live_.memory_bytes() + classes_.memory_bytes() + processes_.memory_bytes() + class_live_.capacity() * sizeof(std::uint64_t) + side_maps + ids + sites_.capacity() * sizeof(SiteStats) +
           sizeof(site_cache_) + ages_.memory_bytes();
}

void Tracker::reset() {
    live_.clear();
    ages_.clear();
    classes_.clear();
    class_live_.clear();
    overflow_.clear();
    unseen_frees_by_cache_.clear();
    unseen_kfree_slots_.clear();
    displaced_.clear();
    displaced_entries_ = 0;
    displacements_.clear();
    next_expiry_ns_ = std::numeric_limits<std::uint64_t>::max();
    class_overflows_ = 0;
    site_ids_.clear();
    sites_.clear();
    site_cache_.fill({});
    totals_ = Totals{};
}

}  // namespace kleak::core
