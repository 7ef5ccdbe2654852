// Live allocations counted per (birth epoch, class), so that `leaks
// --min-age` adds up counts per epoch instead of scanning every live
// allocation (a 1M-entry table is 32 MiB: 6-8 ms of one CPU on an idle
// machine, 11-37 ms while the traced load held both CPUs).
//
// Epochs are ranges of birth units (allocation_class.h), oldest first, none
// overlapping. The newest is open: its counts sit in an array indexed by
// class, so an allocation, or the free of one born in it, is one increment or
// decrement. When an allocation's unit lies past the open epoch, it closes
// (its counts move to a small map) and a new one opens, kBaseUnits long.
// Each time one closes, neighbouring closed epochs merge wherever the merged
// epoch would be at most 1/kAgeRatio of its age long (its age: how many units
// lie between its end and the newest allocation). So young epochs are short,
// old ones long, and about kAgeRatio * ln(age / kBaseUnits) epochs cover
// everything: ~300 for a day.
//
// A query for "born in a unit before U" counts the epochs that end by U and
// leaves out the one U falls into, which is at most max(kBaseUnits, its age /
// kAgeRatio) long: it never counts an allocation younger than asked, and
// leaves out at most those born within max(16.8 ms, min_age / 16) before the
// threshold. A class's oldest allocation is known to its epoch: reported as
// the epoch's last unit, so never older than it is.
//
// Pure bookkeeping: the tracker calls add() for every allocation it starts to
// track and remove() once it stops (freed, or counted replaced), with the
// same class and unit. A late allocation (older than the open epoch) goes to
// the closed epoch holding its unit, or to a new base epoch around it.
#pragma once

#include <absl/container/flat_hash_map.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "allocation_class.h"

namespace kleak::core {

class AgeIndex {
public:
    // 16 units = 16.8 ms: the resolution near the present.
    static constexpr std::uint64_t kBaseUnits = 16;
    // A merged epoch is at most 1/kAgeRatio of its age long.
    static constexpr std::uint64_t kAgeRatio = 16;

    // Inline: the tracker calls these for every allocation and matched free,
    // and most land in the open epoch.
    void add(ClassId cls, std::uint64_t unit) {
        if (open_ && unit - open_begin_ < kBaseUnits && cls < open_counts_.size()) [[likely]] {
            count_in_open(cls);
            return;
        }
        add_slow(cls, unit);
    }
    // An allocation add()ed with this class and unit is no longer live.
    // Returns false (and changes nothing) if no such allocation is counted.
    bool remove(ClassId cls, std::uint64_t unit) {
        if (open_ && unit - open_begin_ < kBaseUnits) {
            if (cls >= open_counts_.size()) return false;
            OpenCount& c = open_counts_[cls];
            if (c.generation != generation_ || c.count == 0) return false;
            --c.count;
            --live_;
            return true;
        }
        return remove_closed(cls, unit);
    }

    // Calls fn(ClassId, count, oldest_unit) for each class with live
    // allocations in epochs that end at or before unit `units` (every unit
    // of the epoch is below it), where count is how many and oldest_unit is
    // the last unit of the oldest epoch holding one. Classes come in no
    // particular order, each once.
    template <class Fn>
    void for_each_class_born_before(std::uint64_t units, Fn&& fn) const;

    // How many live allocations are counted.
    std::uint64_t live() const { return live_; }
    std::size_t epoch_count() const { return closed_.size() + (open_ ? 1 : 0); }
    std::size_t memory_bytes() const;
    void clear();

private:
    struct Epoch {
        std::uint64_t begin;  // first unit
        std::uint64_t end;    // one past the last unit
        absl::flat_hash_map<ClassId, std::uint32_t> counts;  // classes with live allocations only
    };
    struct OpenCount {
        std::uint32_t count = 0;
        std::uint32_t generation = 0;  // == generation_: listed in touched_
    };

    void count_in_open(ClassId cls) {
        OpenCount& c = open_counts_[cls];
        if (c.generation != generation_) {
            c.generation = generation_;
            c.count = 0;
            touched_.push_back(cls);
        }
        ++c.count;
        ++live_;
    }
    void add_slow(ClassId cls, std::uint64_t unit);
    bool remove_closed(ClassId cls, std::uint64_t unit);
    // Closes the open epoch; the next one will end at next_open_end.
    void close_open(std::uint64_t next_open_end);
    void merge_old_epochs(std::uint64_t now);
    std::vector<Epoch>::iterator first_beginning_after(std::uint64_t unit);
    // The closed epoch whose range holds unit, or nullptr.
    Epoch* find_closed(std::uint64_t unit);
    // The same, made for unit if none holds it (late records).
    Epoch& closed_for(std::uint64_t unit);

    std::vector<Epoch> closed_;  // oldest first
    bool open_ = false;
    std::uint64_t open_begin_ = 0;
    std::uint64_t open_end_ = 0;
    std::vector<OpenCount> open_counts_;  // by class id
    std::vector<ClassId> touched_;        // classes counted in the open epoch
    std::uint32_t generation_ = 1;
    std::uint64_t live_ = 0;
};

template <class Fn>
void AgeIndex::for_each_class_born_before(std::uint64_t units, Fn&& fn) const {
    // Per class: the count and the oldest epoch's last unit, gathered in a
    // flat map (classes with old allocations are few next to allocations).
    absl::flat_hash_map<ClassId, std::pair<std::uint64_t, std::uint64_t>> found;
    for (const Epoch& e : closed_) {
        if (e.end > units) break;  // epochs are in order: none later ends by `units` either
        for (const auto& [cls, count] : e.counts) {
            auto [it, inserted] = found.try_emplace(cls, 0, e.end - 1);
            it->second.first += count;
        }
    }
    if (open_ && open_end_ <= units) {
        for (const ClassId cls : touched_) {
            const OpenCount& c = open_counts_[cls];
            if (c.generation != generation_ || c.count == 0) continue;
            auto [it, inserted] = found.try_emplace(cls, 0, open_end_ - 1);  // touched_ lists a class once
            it->second.first += c.count;
        }
    }
    for (const auto& [cls, v] : found) fn(cls, v.first, v.second);
}

}  // namespace kleak::core
