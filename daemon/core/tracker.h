// The outstanding-allocation tracker and the per-call-site aggregates.
//
// Semantics (kleak's, made exact):
//  - an allocation inserts its pointer;
//  - a free of a known pointer removes it and credits the count and bytes to the
//    site that allocated it (`frees`, `bytes_freed`); the freeing site gets a
//    `free_calls`;
//  - a free of an unknown pointer (allocated before tracing began, or its
//    record was lost) is an unmatched free, counted at the freeing site;
//  - an allocation of a pointer that is still outstanding means its free was
//    missed, or is still to come: a free stamped late (event.h) sorts at the
//    next clock reading of its CPU, which can be after another CPU took the
//    freed pointer again. The old entry steps aside ("displaced"): a free
//    whose window reaches back before the new allocation is its free (counted
//    `reordered_frees` too); none within kDisplacedHorizonNs of event time,
//    and the old entry is counted `replaced` at its site, its free missed.
//    Until then it stays outstanding, listed and counted.
// kmalloc and kmem_cache memory match by pointer, whichever free function ran.
// The other families (page, percpu, vmalloc) match within their own key
// space (family.h): decoding keys their pointers, and their sites are keyed by
// (family, call site).
// printk events are not memory events: the tracker ignores them.
// Aggregates are updated per event, so queries cost O(sites), not O(allocations).
//
// Each outstanding allocation costs one 16-byte entry (pointer_table.h) whose
// value packs its class (site, bytes) and its birth time to 1.05 ms
// (allocation_class.h says how that rounds); the daemon's tracker also counts
// it in the age index (age_index.h: a few bytes more per allocation, one map
// entry per birth epoch and class).
#pragma once

#include <absl/container/flat_hash_map.h>
#include <absl/container/inlined_vector.h>

#include <array>
#include <deque>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "age_index.h"
#include "allocation_class.h"
#include "event.h"
#include "pointer_table.h"
#include "process_table.h"
#include "state_bytes.h"
#include "unseen_free_slots.h"

namespace kleak::core {

struct SiteStats {
    std::uint64_t call_site = 0;          // 0: a family's frees, which carry no site (and sites not found)
    EventKind kind = EventKind::kmalloc;  // first kind seen at this site
    Family family = Family::slab;         // a site is one family's: a call site of two is two sites
    std::uint64_t allocs = 0;             // allocations made here
    std::uint64_t bytes_alloc = 0;        // ... their allocated bytes (with slack)
    std::uint64_t bytes_req = 0;          // ... their requested bytes
    std::uint64_t frees = 0;              // allocations made here since freed (anywhere)
    std::uint64_t bytes_freed = 0;        // ... their allocated bytes
    std::uint64_t replaced = 0;           // allocations made here whose free was missed
    std::uint64_t replaced_bytes = 0;
    std::uint64_t outstanding = 0;        // allocations made here, still live
    std::uint64_t outstanding_bytes = 0;
    std::uint64_t free_calls = 0;         // matched frees issued from this site
    std::uint64_t unmatched_frees = 0;    // frees issued here of pointers never seen
    bool reclaimable = false;             // an allocation here was reclaimable memory (KLEAK_GFP_RECLAIMABLE)
};

struct Totals {
    std::uint64_t allocs = 0;
    std::uint64_t frees = 0;  // matched frees
    std::uint64_t bytes_alloc = 0;
    std::uint64_t bytes_req = 0;
    std::uint64_t bytes_freed = 0;
    std::uint64_t unmatched_frees = 0;
    std::uint64_t replaced = 0;
    std::uint64_t outstanding = 0;
    std::uint64_t outstanding_bytes = 0;
    // Frees that sorted after a new allocation of their pointer (see above)
    // and were matched to the allocation they freed; also in `frees`.
    std::uint64_t reordered_frees = 0;
};

// Adds a site's counts to totals (reordered_frees has no per-site count).
void add_site_counts(Totals& totals, const SiteStats& site);

// One live allocation, as for_each_outstanding() reports it (decoded from the
// packed entry, so a value, not a reference into the table).
struct OutstandingAllocation {
    std::uint64_t ts_ns;  // rounded_birth_ns(the allocation's ts): up to 1.05 ms late, never early
    SiteId site;
    std::uint32_t bytes_alloc;
};

// Live allocations of one site surely born by a given time (see
// Tracker::outstanding_born_by).
struct SiteAge {
    std::uint64_t count = 0;
    std::uint64_t bytes = 0;
    std::uint64_t oldest_ts_ns = std::numeric_limits<std::uint64_t>::max();  // rounded like ts_ns above
};

class Tracker {
public:
    Tracker() = default;
    // class_limit < kMaxClasses: a smaller class table, so tests can overflow it.
    explicit Tracker(std::uint32_t class_limit) : classes_(class_limit) {}

    // Keep live allocations counted per birth epoch (age_index.h) from now
    // on, so outstanding_born_by_epochs() can add up epochs instead of
    // scanning the table, to within an epoch. Only before the first event: the daemon does
    // (it answers `leaks --min-age`); a report never asks, and saves the cost.
    void index_ages() { index_ages_ = true; }
    // Whether the index answers: kept, and complete (an allocation whose class
    // did not fit is not in it; the first one empties it until reset()).
    bool ages_indexed() const { return index_ages_ && class_overflows_ == 0; }

    void apply(const Event& event);
    // The same as apply(event) for each event in order, faster on a batch:
    // it prefetches the table entries of events a few places ahead.
    void apply(std::span<const Event> events);

    const std::vector<SiteStats>& sites() const { return sites_; }
    const Totals& totals() const { return totals_; }
    // One family's totals, added up over its sites (O(sites)): kept per site,
    // not per event, so the hot path pays nothing for them. reordered_frees
    // is not kept per site, so it stays 0 here.
    Totals family_totals(Family family) const;
    std::size_t outstanding_count() const { return live_.size() + displaced_entries_; }
    // Outstanding allocations displaced by a new allocation of their pointer,
    // waiting for a late free (see the top of this file).
    std::size_t displaced_count() const { return displaced_entries_; }

    // How long (event time) a displaced entry waits for its free. A late
    // free sorts at most its window after it happened, and a window ends at
    // its batch's flush: within the daemon's drain period (100 ms), or the
    // 2 ms batch age on a busy CPU.
    static constexpr std::uint64_t kDisplacedHorizonNs = 1'000'000'000;

    // Calls fn(ptr, const OutstandingAllocation&) for every live allocation
    // (a displaced one and the one that took its pointer both: the same ptr
    // twice).
    template <class Fn>
    void for_each_outstanding(Fn&& fn) const {
        live_.for_each([&](std::uint64_t ptr, std::uint64_t packed) {
            const AllocationClass c = class_of_entry(ptr, packed);
            fn(ptr, OutstandingAllocation{latest_birth_ns(unit_of(packed)), c.site, c.bytes_alloc});
        });
        for (const auto& [ptr, list] : displaced_)
            for (const Displaced& d : list)
                fn(ptr, OutstandingAllocation{latest_birth_ns(d.birth_unit), d.cls.site, d.cls.bytes_alloc});
    }

    // Per site (indexed by SiteId, sites().size() long): the live allocations
    // surely born at or before born_before_ns, i.e. whose rounded birth time is
    // <= born_before_ns. One pass over the table, aggregated per class:
    // exact, and O(outstanding) (a report's tracker keeps no age index).
    std::vector<SiteAge> outstanding_born_by(std::uint64_t born_before_ns) const;
    // The same from the age index (only when ages_indexed()), in O(epochs x
    // classes): the allocations born in epochs that end by born_before_ns,
    // which leaves out those born within the threshold's epoch: at most
    // max(16.8 ms, age / 16) before it (age_index.h). oldest_ts_ns is the
    // oldest epoch's last nanosecond, never older than the allocation.
    std::vector<SiteAge> outstanding_born_by_epochs(std::uint64_t born_before_ns) const;

    // Frees of objects never seen allocated (made before tracing started, or
    // their record lost), per slab cache key (slab_caches.h): cumulative since
    // reset(). kmem_cache_free names its cache (6.1+); a kfree's cache is
    // named by the next allocation at its address (unseen_free_slots.h);
    // vmalloc and percpu count under family_turnover_key(). A
    // cache that has them is still replacing objects kleakd cannot see
    // (verdict.h, "filling up").
    const absl::flat_hash_map<std::uint64_t, std::uint64_t>& unseen_frees_by_cache() const {
        return unseen_frees_by_cache_;
    }
    // kfree'd addresses not kept to be named (UnseenFreeSlots::dropped()).
    std::uint64_t unseen_kfree_slots_dropped() const { return unseen_kfree_slots_.dropped(); }

    // Distinct (site, bytes_alloc) classes interned so far.
    std::size_t class_count() const { return classes_.size(); }
    // Calls fn(const AllocationClass&, cache_key, live) for every class: its
    // slab cache (slab_caches.h) and its outstanding allocations (displaced
    // ones included; overflow-class ones are in no class). O(classes).
    template <class Fn>
    void for_each_class(Fn&& fn) const {
        for (ClassId id = 0; id < classes_.size(); ++id)
            fn(classes_[id], classes_.cache_key(id), id < class_live_.size() ? class_live_[id] : 0);
    }
    // Allocations made after the class table filled up with a class not in it.
    // They are tracked exactly all the same, in a side map (overflow_count()
    // of them are live now); a non-zero figure means memory per allocation is
    // higher than designed.
    std::uint64_t class_overflows() const { return class_overflows_; }
    std::size_t overflow_count() const { return overflow_.size(); }

    // Who allocated (process_table.h): the Origin::process ids of classes.
    // Kept across reset(). processless_allocations(): allocations that carry
    // a stack whose class lost its process, as the class table held
    // kProcessClassLimit classes (allocation_class.h).
    const ProcessTable& processes() const { return processes_; }
    std::uint64_t processless_allocations() const { return processless_allocations_; }

    // End of input: no free is still to come, so every displaced entry's
    // free was missed (counted `replaced`).
    void settle() { expire_displaced(std::numeric_limits<std::uint64_t>::max()); }

    // Heap bytes the tracker holds: its tables, at their capacity.
    std::size_t memory_bytes() const;

    // Forget everything: a fresh baseline.
    void reset();

    // The whole table and every aggregate as bytes (tracker_image.cpp), for
    // the state image a restarted daemon loads (state_image.h); load_image()
    // into a tracker that has seen no event rebuilds it exactly (its age
    // index too, when index_ages() was called). A damaged section makes it
    // return false and leaves the tracker reset().
    void save_image(ByteWriter& out) const;
    bool load_image(ByteReader& in);

private:
    SiteId intern(std::uint64_t call_site, EventKind kind);
    void allocated(const Event& event, SiteId here);
    void freed(const Event& event, SiteId here);
    void displace(std::uint64_t ptr, std::uint64_t packed, std::uint64_t by_ns);
    bool freed_displaced(const Event& event, SiteId here);
    void expire_displaced(std::uint64_t now_ns);
    bool load_sections(ByteReader& in);
    void rebuild_derived();
    // The accounting of a matched free, and of a missed one.
    void credit_free(const AllocationClass& origin, ClassId origin_id, SiteId here);
    void count_replaced(const AllocationClass& prior, ClassId prior_id);
    // An allocation stops being outstanding: out of the age index.
    void unindex(ClassId cls, std::uint64_t unit) {
        if (ages_indexed()) ages_.remove(cls, unit);
    }
    AllocationClass class_of_entry(std::uint64_t ptr, std::uint64_t packed) const {
        const ClassId id = class_of(packed);
        return id != kOverflowClass ? classes_[id] : overflow_.at(ptr);
    }

    // ptr -> pack_allocation(class, birth unit)
    PointerTable live_;
    ClassTable classes_;
    std::vector<std::uint64_t> class_live_;  // by ClassId: outstanding allocations of the class
    // ptr -> class, for live entries whose class is kOverflowClass.
    absl::flat_hash_map<std::uint64_t, AllocationClass> overflow_;
    std::uint64_t class_overflows_ = 0;
    ProcessTable processes_;
    std::uint64_t processless_allocations_ = 0;
    // The Origin of an allocation event (the process it was made by, if it carries a stack).
    Origin origin_of(const Event& event);
    absl::flat_hash_map<std::uint64_t, std::uint64_t> unseen_frees_by_cache_;
    UnseenFreeSlots unseen_kfree_slots_;
    struct Displaced {
        AllocationClass cls;
        ClassId class_id;  // its id in classes_ (kOverflowClass: not interned)
        std::uint64_t birth_unit;
        std::uint64_t displaced_at_ns;  // the new allocation's time
    };
    // Per pointer, oldest first: a pointer can be displaced again before the
    // late free of its first displaced entry arrives.
    using DisplacedMap = absl::flat_hash_map<std::uint64_t, absl::InlinedVector<Displaced, 1>>;
    DisplacedMap displaced_;
    std::size_t displaced_entries_ = 0;
    void forget_displaced(DisplacedMap::iterator it, absl::InlinedVector<Displaced, 1>::iterator entry);
    // Every displacement in the order it happened: event (merge) order, so by
    // time but for late records, which then expire a little late. Expiry pops
    // from the front: O(1) per displacement, however many wait.
    struct Displacement {
        std::uint64_t at_ns;
        std::uint64_t ptr;
    };
    std::deque<Displacement> displacements_;
    // Event time at which the front displacement expires (max: none).
    std::uint64_t next_expiry_ns_ = std::numeric_limits<std::uint64_t>::max();
    absl::flat_hash_map<std::uint64_t, SiteId> site_ids_;
    // Call sites repeat: a small direct-mapped cache in front of site_ids_
    // saves a hash-table probe on most events. call_site 0 marks a free slot
    // (no kernel code lives at address 0). 4096 slots (64 KiB), like the
    // class cache: with 1024, a stream of 768 sites and 4096 classes (the
    // replay benchmark's) spent 14 % of its tracking in the slow paths, and
    // replay ran 12-15 % slower.
    static constexpr unsigned kSiteCacheBits = 12;
    struct SiteCacheSlot {
        std::uint64_t call_site = 0;
        SiteId id = 0;
    };
    std::array<SiteCacheSlot, std::size_t{1} << kSiteCacheBits> site_cache_{};
    std::vector<SiteStats> sites_;
    Totals totals_;
    bool index_ages_ = false;
    AgeIndex ages_;  // every outstanding allocation with an interned class, when index_ages_
};

}  // namespace kleak::core
