// The `leaks --min-age` question, two ways.
//
// Tracker::outstanding_born_by looks at every live allocation, since only an
// allocation knows its age: exact, and O(outstanding) (1M entries, a 32 MiB
// table: 6-8 ms of one CPU on an idle machine). So the loop does the least
// per entry: one compare on the packed value (birth unit in its high bits)
// and a count and a min per class; classes are folded into sites once at
// the end. A report's tracker, which keeps no age index, answers this way.
//
// Tracker::outstanding_born_by_epochs adds up the age index (age_index.h):
// what the daemon answers with, to within the threshold's epoch.
#include <algorithm>

#include "tracker.h"

namespace kleak::core {

namespace {

struct ClassAge {
    std::uint64_t count = 0;
    std::uint64_t oldest_packed = ~std::uint64_t{0};  // same class: the smallest packed is the oldest
};

}  // namespace

std::vector<SiteAge> Tracker::outstanding_born_by(std::uint64_t born_before_ns) const {
    std::vector<SiteAge> per_site(sites_.size());
    const std::uint64_t units = units_wholly_by(born_before_ns);
    if (units == 0) return per_site;
    // Included iff packed <= last: its unit is below `units`, whatever its class.
    const std::uint64_t last =
        units > kMaxBirthUnit ? ~std::uint64_t{0} : pack_allocation(kOverflowClass, units - 1);

    // 16 bytes per class for the query's duration: less than the class table
    // itself holds. Empty slots read class 0 and count nothing.
    std::vector<ClassAge> per_class(std::max<std::size_t>(classes_.size(), 1));
    std::vector<std::pair<std::uint64_t, std::uint64_t>> overflowed;  // included entries with no class id: ptr, packed
    // Branch-free on occupancy and age: the table's order is random, so a
    // branch on either mispredicts about every other slot (measured: 16 ms
    // at 1M with branches).
    live_.for_each_slot([&](std::uint64_t ptr, std::uint64_t packed, bool occupied) {
        const ClassId id = class_of(packed);
        if (id == kOverflowClass) [[unlikely]] {
            if (occupied && packed <= last) overflowed.emplace_back(ptr, packed);
            return;
        }
        const bool included = occupied & (packed <= last);
        ClassAge& c = per_class[id];
        c.count += included;
        c.oldest_packed = std::min(c.oldest_packed, included ? packed : ~std::uint64_t{0});
    });

    const auto add = [&per_site](const AllocationClass& cls, std::uint64_t count, std::uint64_t oldest_unit) {
        SiteAge& s = per_site[cls.site];
        s.count += count;
        s.bytes += count * cls.bytes_alloc;
        s.oldest_ts_ns = std::min(s.oldest_ts_ns, latest_birth_ns(oldest_unit));
    };
    for (ClassId id = 0; id < classes_.size(); ++id)
        if (per_class[id].count > 0) add(classes_[id], per_class[id].count, unit_of(per_class[id].oldest_packed));
    for (const auto& [ptr, packed] : overflowed) add(overflow_.at(ptr), 1, unit_of(packed));
    for (const auto& [ptr, list] : displaced_)
        for (const Displaced& d : list)
            if (d.birth_unit < units) add(d.cls, 1, d.birth_unit);
    return per_site;
}

std::vector<SiteAge> Tracker::outstanding_born_by_epochs(std::uint64_t born_before_ns) const {
    std::vector<SiteAge> per_site(sites_.size());
    ages_.for_each_class_born_before(
        units_wholly_by(born_before_ns), [&](ClassId id, std::uint64_t count, std::uint64_t oldest_unit) {
            const AllocationClass& cls = classes_[id];
            SiteAge& s = per_site[cls.site];
            s.count += count;
            s.bytes += count * cls.bytes_alloc;
            s.oldest_ts_ns = std::min(s.oldest_ts_ns, latest_birth_ns(oldest_unit));
        });
    return per_site;
}

}  // namespace kleak::core
