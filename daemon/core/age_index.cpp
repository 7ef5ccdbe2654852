#include "age_index.h"

#include <algorithm>
#include <utility>

namespace kleak::core {

void AgeIndex::add_slow(ClassId cls, std::uint64_t unit) {
    if (unit < open_begin_ && open_) {
        ++live_;
        ++closed_for(unit).counts[cls];  // a late record
        return;
    }
    if (!open_ || unit >= open_end_) {
        const std::uint64_t begin = unit / kBaseUnits * kBaseUnits;
        if (open_) close_open(begin + kBaseUnits);
        open_ = true;
        open_begin_ = begin;
        open_end_ = begin + kBaseUnits;
    }
    if (cls >= open_counts_.size()) {
        // Class ids are dense (interned in order): the array grows with the class table.
        open_counts_.resize(std::max<std::size_t>(cls + 1, std::min<std::size_t>(2 * open_counts_.size(), kMaxClasses)));
    }
    count_in_open(cls);
}

bool AgeIndex::remove_closed(ClassId cls, std::uint64_t unit) {
    Epoch* const e = find_closed(unit);
    if (e == nullptr) return false;
    const auto it = e->counts.find(cls);
    if (it == e->counts.end()) return false;
    if (--it->second == 0) e->counts.erase(it);
    --live_;
    return true;
}

std::vector<AgeIndex::Epoch>::iterator AgeIndex::first_beginning_after(std::uint64_t unit) {
    return std::upper_bound(closed_.begin(), closed_.end(), unit,
                            [](std::uint64_t u, const Epoch& e) { return u < e.begin; });
}

AgeIndex::Epoch* AgeIndex::find_closed(std::uint64_t unit) {
    // Most frees of closed-epoch allocations are of young ones: the newest
    // closed epoch first, then the last one beginning at or before unit.
    if (!closed_.empty() && unit >= closed_.back().begin) return unit < closed_.back().end ? &closed_.back() : nullptr;
    const auto next = first_beginning_after(unit);
    return next != closed_.begin() && unit < std::prev(next)->end ? &*std::prev(next) : nullptr;
}

AgeIndex::Epoch& AgeIndex::closed_for(std::uint64_t unit) {
    if (Epoch* const holding = find_closed(unit)) return *holding;
    const auto next = first_beginning_after(unit);
    // In no epoch: a base epoch of its own around it, cut to the gap it is in
    // (stretching a neighbour could make an old epoch span up to the present).
    const std::uint64_t aligned = unit / kBaseUnits * kBaseUnits;
    const std::uint64_t floor = next != closed_.begin() ? std::prev(next)->end : 0;
    const std::uint64_t ceiling = next != closed_.end() ? next->begin : (open_ ? open_begin_ : aligned + kBaseUnits);
    Epoch late{std::max(aligned, floor), std::min(aligned + kBaseUnits, ceiling), {}};
    return *closed_.insert(next, std::move(late));
}

void AgeIndex::close_open(std::uint64_t next_open_end) {
    Epoch closed{open_begin_, open_end_, {}};
    for (const ClassId cls : touched_) {
        OpenCount& c = open_counts_[cls];
        if (c.count > 0) closed.counts.emplace(cls, c.count);
        c.count = 0;
    }
    touched_.clear();
    if (++generation_ == 0) {  // wrapped (2^32 epochs): no stale generation may match
        for (OpenCount& c : open_counts_) c.generation = 0;
        generation_ = 1;
    }
    open_ = false;
    // An epoch whose allocations are all gone already is left out: the time
    // it covered holds nothing (a late record there gets an epoch of its own).
    if (closed.counts.empty()) return;
    closed_.push_back(std::move(closed));
    merge_old_epochs(next_open_end);
}

// One pass from the newest closed epoch back: two neighbours merge when the
// result is at most 1/kAgeRatio of its age long, measured from `now`, the end
// of the epoch opening for the newest allocation. Ages only grow, so an epoch
// that met the bound when it was made meets it for good.
void AgeIndex::merge_old_epochs(std::uint64_t now) {
    for (std::size_t i = closed_.size() - 1; i > 0; --i) {
        Epoch& older = closed_[i - 1];
        Epoch& newer = closed_[i];
        const std::uint64_t age = now > newer.end ? now - newer.end : 0;
        if ((newer.end - older.begin) * kAgeRatio > age) continue;
        if (older.counts.size() < newer.counts.size()) std::swap(older.counts, newer.counts);
        for (const auto& [cls, count] : newer.counts) older.counts[cls] += count;
        older.end = newer.end;
        closed_.erase(closed_.begin() + static_cast<std::ptrdiff_t>(i));
    }
}

std::size_t AgeIndex::memory_bytes() const {
    std::size_t bytes = closed_.capacity() * sizeof(Epoch) + open_counts_.capacity() * sizeof(OpenCount) +
                        touched_.capacity() * sizeof(ClassId);
    // flat_hash_map: one slot plus one control byte per bucket.
    for (const Epoch& e : closed_) bytes += e.counts.capacity() * (sizeof(std::pair<ClassId, std::uint32_t>) + 1);
    return bytes;
}

void AgeIndex::clear() {
    closed_ = {};
    open_ = false;
    open_begin_ = open_end_ = 0;
    open_counts_ = {};
    touched_ = {};
    generation_ = 1;
    live_ = 0;
}

}  // namespace kleak::core
