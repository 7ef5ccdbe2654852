// Tracker::save_image / load_image: the tracker's state as bytes, in the
// order it is rebuilt. Only what cannot be derived is written (sites,
// classes, totals, entries, displaced entries); the site-id map, the caches,
// the per-class live counts and the age index are rebuilt on load.
//
// One outstanding allocation is written by write_entry() and read by
// read_entry(), one class by write_class() and the class loop of
// load_image() (a class's stack is not kept: see there): a field added to
// an entry or a class (attribution, say) goes there, with a bump of
// kStateFormatVersion (state_image.h).
#include <algorithm>

#include "tracker.h"

namespace kleak::core {

namespace {

// 16 bytes: the pointer and its packed class and birth unit, as the table
// holds them. A class id kOverflowClass is followed by the class itself.
void write_entry(ByteWriter& out, std::uint64_t ptr, std::uint64_t packed, const AllocationClass* overflow) {
    out.u64(ptr);
    out.u64(packed);
    if (overflow != nullptr) {
        out.u32(overflow->site);
        out.u32(overflow->bytes_alloc);
    }
}

struct Entry {
    std::uint64_t ptr = 0;
    std::uint64_t packed = 0;
    AllocationClass overflow{};
};

Entry read_entry(ByteReader& in) {
    Entry e;
    e.ptr = in.u64();
    e.packed = in.u64();
    if (class_of(e.packed) == kOverflowClass) e.overflow = {in.u32(), in.u32()};
    return e;
}

void write_class(ByteWriter& out, const AllocationClass& c, std::uint64_t cache_key) {
    out.u32(c.site);
    out.u32(c.bytes_alloc);
    out.u64(cache_key);
}

void write_site(ByteWriter& out, const SiteStats& s) {
    out.u64(s.call_site);
    out.u32(static_cast<std::uint32_t>(s.kind));
    out.u8(static_cast<std::uint8_t>(s.family));
    out.u8(s.reclaimable ? 1 : 0);
    for (const std::uint64_t v : {s.allocs, s.bytes_alloc, s.bytes_req, s.frees, s.bytes_freed, s.replaced,
                                  s.replaced_bytes, s.outstanding, s.outstanding_bytes, s.free_calls,
                                  s.unmatched_frees})
        out.u64(v);
}

SiteStats read_site(ByteReader& in) {
    SiteStats s;
    s.call_site = in.u64();
    s.kind = static_cast<EventKind>(in.u32());
    s.family = static_cast<Family>(in.u8());
    s.reclaimable = in.u8() != 0;
    for (std::uint64_t* v : {&s.allocs, &s.bytes_alloc, &s.bytes_req, &s.frees, &s.bytes_freed, &s.replaced,
                             &s.replaced_bytes, &s.outstanding, &s.outstanding_bytes, &s.free_calls,
                             &s.unmatched_frees})
        *v = in.u64();
    if (static_cast<std::size_t>(s.family) >= kFamilyCount || family_of(s.kind) != s.family) in.fail();
    return s;
}

void write_totals(ByteWriter& out, const Totals& t) {
    for (const std::uint64_t v : {t.allocs, t.frees, t.bytes_alloc, t.bytes_req, t.bytes_freed, t.unmatched_frees,
                                  t.replaced, t.outstanding, t.outstanding_bytes, t.reordered_frees})
        out.u64(v);
}

Totals read_totals(ByteReader& in) {
    Totals t;
    for (std::uint64_t* v : {&t.allocs, &t.frees, &t.bytes_alloc, &t.bytes_req, &t.bytes_freed, &t.unmatched_frees,
                             &t.replaced, &t.outstanding, &t.outstanding_bytes, &t.reordered_frees})
        *v = in.u64();
    return t;
}

}  // namespace

void Tracker::save_image(ByteWriter& out) const {
    out.reserve(out.size() + live_.size() * 16 + sites_.size() * 104 + classes_.size() * 16 + 4096);
    out.u64(sites_.size());
    for (const SiteStats& s : sites_) write_site(out, s);
    out.u64(classes_.size());
    for (ClassId id = 0; id < classes_.size(); ++id) write_class(out, classes_[id], classes_.cache_key(id));
    write_totals(out, totals_);
    out.u64(class_overflows_);
    out.u64(unseen_frees_by_cache_.size());
    for (const auto& [cache, count] : unseen_frees_by_cache_) {
        out.u64(cache);
        out.u64(count);
    }
    out.u64(live_.size());
    live_.for_each([&](std::uint64_t ptr, std::uint64_t packed) {
        write_entry(out, ptr, packed, class_of(packed) == kOverflowClass ? &overflow_.at(ptr) : nullptr);
    });
    out.u64(displaced_entries_);
    for (const auto& [ptr, list] : displaced_)
        for (const Displaced& d : list) {
            write_entry(out, ptr, pack_allocation(d.class_id, d.birth_unit),
                        d.class_id == kOverflowClass ? &d.cls : nullptr);
            out.u64(d.displaced_at_ns);
        }
    out.u64(displacements_.size());
    for (const Displacement& d : displacements_) {
        out.u64(d.at_ns);
        out.u64(d.ptr);
    }
}

bool Tracker::load_image(ByteReader& in) {
    reset();
    if (load_sections(in) && in.ok()) {
        rebuild_derived();
        return true;
    }
    in.fail();
    reset();
    return false;
}

bool Tracker::load_sections(ByteReader& in) {
    const std::uint64_t site_count = in.u64();
    if (!in.can_hold(site_count, 96)) return false;
    sites_.reserve(site_count);
    for (std::uint64_t i = 0; i < site_count && in.ok(); ++i) {
        sites_.push_back(read_site(in));
        const SiteStats& s = sites_.back();
        if (!site_ids_.try_emplace(family_key(s.family, s.call_site), static_cast<SiteId>(i)).second) return false;
    }
    const std::uint64_t class_count = in.u64();
    if (!in.can_hold(class_count, 16)) return false;
    // Classes that differed only by their stack (Origin) become one: a stack
    // id names a stack in the old process's BPF stack map, which is gone.
    std::vector<ClassId> saved_to_loaded;
    saved_to_loaded.reserve(class_count);
    for (std::uint64_t i = 0; i < class_count && in.ok(); ++i) {
        const SiteId site = in.u32();
        const std::uint32_t bytes = in.u32();
        const std::uint64_t cache_key = in.u64();
        if (site >= sites_.size()) return false;
        saved_to_loaded.push_back(classes_.intern(site, bytes, cache_key));
    }
    const auto remapped = [&](std::uint64_t packed) {
        const ClassId cls = class_of(packed);
        return cls == kOverflowClass || cls >= saved_to_loaded.size()
                   ? packed
                   : pack_allocation(saved_to_loaded[cls], unit_of(packed));
    };
    totals_ = read_totals(in);
    class_overflows_ = in.u64();
    const std::uint64_t caches = in.u64();
    if (!in.can_hold(caches, 16)) return false;
    for (std::uint64_t i = 0; i < caches; ++i) {
        const std::uint64_t cache = in.u64();
        unseen_frees_by_cache_[cache] = in.u64();
    }
    const auto valid = [&](const Entry& e) {
        const ClassId cls = class_of(e.packed);
        return cls == kOverflowClass ? e.overflow.site < sites_.size() : cls < classes_.size();
    };
    const std::uint64_t live = in.u64();
    if (!in.can_hold(live, 16)) return false;
    live_.reserve(live);  // the entries come in slot order (pointer_table.h)
    for (std::uint64_t i = 0; i < live && in.ok(); ++i) {
        Entry e = read_entry(in);
        if (class_of(e.packed) >= class_count && class_of(e.packed) != kOverflowClass) return false;
        e.packed = remapped(e.packed);
        if (!valid(e) || !live_.try_emplace(e.ptr, e.packed).second) return false;
        if (class_of(e.packed) == kOverflowClass) overflow_[e.ptr] = e.overflow;
    }
    const std::uint64_t displaced = in.u64();
    if (!in.can_hold(displaced, 24)) return false;
    for (std::uint64_t i = 0; i < displaced && in.ok(); ++i) {
        Entry e = read_entry(in);
        const std::uint64_t at_ns = in.u64();
        if (class_of(e.packed) >= class_count && class_of(e.packed) != kOverflowClass) return false;
        e.packed = remapped(e.packed);
        if (!valid(e)) return false;
        const ClassId cls = class_of(e.packed);
        displaced_[e.ptr].push_back(
            {cls == kOverflowClass ? e.overflow : classes_[cls], cls, unit_of(e.packed), at_ns});
    }
    displaced_entries_ = displaced;
    const std::uint64_t pending = in.u64();
    if (!in.can_hold(pending, 16)) return false;
    for (std::uint64_t i = 0; i < pending; ++i) {
        const std::uint64_t at_ns = in.u64();
        displacements_.push_back({at_ns, in.u64()});
    }
    // The aggregates must agree with the entries: a mismatch is an image
    // from another build or a bug, and would make counts wrap below zero.
    return in.ok() && totals_.outstanding == live_.size() + displaced_entries_;
}

// What the image leaves out: per-class live counts and the age index (its
// epochs are built oldest first, so the units go in sorted).
void Tracker::rebuild_derived() {
    next_expiry_ns_ = displacements_.empty() ? std::numeric_limits<std::uint64_t>::max()
                                             : displacements_.front().at_ns + kDisplacedHorizonNs;
    class_live_.assign(classes_.size(), 0);
    std::vector<std::uint64_t> by_unit;  // pack_allocation(class, unit) sorts by unit first
    if (ages_indexed()) by_unit.reserve(outstanding_count());
    const auto count = [&](std::uint64_t packed) {
        const ClassId cls = class_of(packed);
        if (cls == kOverflowClass) return;
        ++class_live_[cls];
        if (ages_indexed()) by_unit.push_back(packed);
    };
    live_.for_each([&](std::uint64_t, std::uint64_t packed) { count(packed); });
    for (const auto& [ptr, list] : displaced_)
        for (const Displaced& d : list) count(pack_allocation(d.class_id, d.birth_unit));
    if (!ages_indexed()) return;
    std::sort(by_unit.begin(), by_unit.end());
    for (const std::uint64_t packed : by_unit) ages_.add(class_of(packed), unit_of(packed));
}

}  // namespace kleak::core
