// A hash map from a 64-bit pointer to a 64-bit value, built for the tracker's
// one table that holds an entry per outstanding allocation (1M and more).
//
// Why not absl::flat_hash_map<u64, u64>: its control bytes cost one byte per
// slot, and iterating it branches per slot on the control byte: a full scan of
// 1M entries (the `leaks --min-age` query) took ~20 ms, against ~5 ms for a
// plain walk of a slot array. Here a slot is just {key, value} (16 bytes), key
// 0 marks an empty slot, and pointer 0 (never a live allocation in practice,
// but possible in a replayed stream) lives in a side slot so every key works.
//
// Linear probing, Fibonacci hashing (the high bits of key * 2^64/phi: pointers
// that differ only in their low bits land far apart), grown by doubling when
// more than 3/4 full (at that worst load a lookup reads ~2.5 slots on average
// when the key is there and ~8.5 when it is not: contiguous, so one to three
// cache lines, the first of which prefetch() can start early), and
// backward-shift deletion, so there are no tombstones and no rehash on churn.
// Memory: 16 bytes per slot, 21-43 bytes per entry depending on where the
// count sits between two doublings (33.5 at 1M entries, in 2^21 slots).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>

namespace kleak::core {

class PointerTable {
public:
    PointerTable() { allocate(kMinCapacity); }

    std::size_t size() const { return size_ + (has_zero_ ? 1 : 0); }
    std::size_t capacity() const { return mask_ + 1; }
    // Heap bytes held: the slot array.
    std::size_t memory_bytes() const { return capacity() * sizeof(Slot); }

    // The value stored for key, or nullptr.
    std::uint64_t* find(std::uint64_t key) {
        if (key == 0) return has_zero_ ? &zero_value_ : nullptr;
        for (std::size_t i = home(key);; i = (i + 1) & mask_) {
            if (slots_[i].key == key) return &slots_[i].value;
            if (slots_[i].key == 0) return nullptr;
        }
    }

    // Inserts {key, value} unless key is present. Returns the stored value's
    // address and whether it was inserted (if not, the old value is untouched).
    std::pair<std::uint64_t*, bool> try_emplace(std::uint64_t key, std::uint64_t value) {
        if (key == 0) {
            if (has_zero_) return {&zero_value_, false};
            has_zero_ = true;
            zero_value_ = value;
            return {&zero_value_, true};
        }
        if (size_ + 1 > grow_at_) grow();
        std::size_t i = home(key);
        for (; slots_[i].key != 0; i = (i + 1) & mask_) {
            if (slots_[i].key == key) return {&slots_[i].value, false};
        }
        slots_[i] = {key, value};
        ++size_;
        return {&slots_[i].value, true};
    }

    // Removes key; returns whether it was present, and its value in *value.
    bool erase(std::uint64_t key, std::uint64_t* value = nullptr) {
        if (key == 0) {
            if (value != nullptr && has_zero_) *value = zero_value_;
            return std::exchange(has_zero_, false);
        }
        std::size_t i = home(key);
        for (; slots_[i].key != key; i = (i + 1) & mask_) {
            if (slots_[i].key == 0) return false;
        }
        if (value != nullptr) *value = slots_[i].value;
        // Backward-shift deletion (Knuth 6.4, Algorithm R): pull later entries
        // of the cluster into the hole unless that would move one before its
        // home slot, so every lookup still finds its key before an empty slot.
        for (std::size_t j = (i + 1) & mask_; slots_[j].key != 0; j = (j + 1) & mask_) {
            const std::size_t h = home(slots_[j].key);
            // Entry j may fill hole i iff its home is not cyclically in (i, j].
            const bool home_after_hole = i <= j ? (i < h && h <= j) : (i < h || h <= j);
            if (!home_after_hole) {
                slots_[i] = slots_[j];
                i = j;
            }
        }
        slots_[i].key = 0;
        --size_;
        return true;
    }

    // Makes room for `entries` without growing. Needed before inserting keys
    // in another table's slot order (a state image, tracker_image.cpp): they
    // come sorted by home, and a table that grows meanwhile piles each half
    // onto the same slots, so that linear probing turns quadratic (a 1M
    // load took 10 s instead of 0.1 s).
    void reserve(std::size_t entries) {
        std::size_t capacity = kMinCapacity;
        while (capacity / 4 * 3 < entries) capacity *= 2;
        if (capacity > this->capacity()) rehash(capacity);
    }

    // Starts loading the cache lines a lookup or erase of key will read.
    // Issued some events ahead, it hides most of a lookup's miss (the table
    // is far larger than the caches). Two lines: a probe that starts in a
    // line's last slots runs on into the next one, and so does an erase's
    // backward shift, which reads on to the cluster's end (perf of replay:
    // half of Tracker::freed() waited on those reads). Always inlined: GCC
    // finds an out-of-line copy free of side effects and deletes its calls
    // (with the second line it stopped inlining it, and every prefetch went).
    [[gnu::always_inline]] void prefetch(std::uint64_t key) const {
        const std::size_t h = home(key);
        __builtin_prefetch(&slots_[h]);
        __builtin_prefetch(&slots_[(h + kSlotsPerLine - 1) & mask_]);
    }

    // Calls fn(key, value) for every entry, in slot order.
    template <class Fn>
    void for_each(Fn&& fn) const {
        if (has_zero_) fn(std::uint64_t{0}, zero_value_);
        const Slot* const end = slots_.get() + capacity();
        for (const Slot* s = slots_.get(); s != end; ++s) {
            if (s->key != 0) fn(s->key, s->value);
        }
    }

    // Calls fn(key, value, occupied) for every slot, empty ones included
    // (key and value 0, occupied false), then for pointer 0 if present. For
    // whole-table scans: with random homes, a branch on occupancy mispredicts
    // about every other slot; fn can fold `occupied` in without branching.
    template <class Fn>
    void for_each_slot(Fn&& fn) const {
        const Slot* const end = slots_.get() + capacity();
        for (const Slot* s = slots_.get(); s != end; ++s) fn(s->key, s->value, s->key != 0);
        if (has_zero_) fn(std::uint64_t{0}, zero_value_, true);
    }

    // Empties the table and gives its memory back.
    void clear() {
        allocate(kMinCapacity);
        has_zero_ = false;
    }

private:
    struct Slot {
        std::uint64_t key;
        std::uint64_t value;
    };
    static constexpr std::size_t kMinCapacity = 16;
    static constexpr std::size_t kSlotsPerLine = 64 / sizeof(Slot);

    // Multiplicative hashing, top bits: slab pointers come in strides, which
    // a multiply spreads evenly (short probe runs). Not the multiplier the
    // BPF programs sample pointers with (--sample-shift keeps the pointers
    // whose ptr * 0x9E3779B97F4A7C15 has its top bits zero): with that one,
    // every kept pointer would have its home in the first 1/2^shift of the
    // table. Any other odd multiplier is unrelated to it.
    std::size_t home(std::uint64_t key) const {
        return static_cast<std::size_t>((key * 0xD6E8FEB86659FD93ULL) >> shift_);
    }

    void allocate(std::size_t capacity) {
        adopt(std::make_unique<Slot[]>(capacity), capacity);  // value-initialized: all empty
    }

    void adopt(std::unique_ptr<Slot[]> slots, std::size_t capacity) {
        slots_ = std::move(slots);
        mask_ = capacity - 1;
        shift_ = 64 - static_cast<unsigned>(__builtin_ctzll(capacity));
        grow_at_ = capacity / 4 * 3;
        size_ = 0;
    }

    void grow() { rehash(capacity() * 2); }

    void rehash(std::size_t new_capacity) {
        const std::size_t old_capacity = capacity();
        const std::size_t entries = size_;
        // Allocate first: if that throws, the table is still whole.
        auto bigger = std::make_unique<Slot[]>(new_capacity);
        const std::unique_ptr<Slot[]> old = std::move(slots_);
        adopt(std::move(bigger), new_capacity);
        for (std::size_t k = 0; k < old_capacity; ++k) {
            if (old[k].key == 0) continue;
            std::size_t i = home(old[k].key);
            while (slots_[i].key != 0) i = (i + 1) & mask_;
            slots_[i] = old[k];
        }
        size_ = entries;
    }

    std::unique_ptr<Slot[]> slots_;
    std::size_t mask_ = 0;
    unsigned shift_ = 64;
    std::size_t grow_at_ = 0;
    std::size_t size_ = 0;  // entries in slots_ (the zero key not included)
    bool has_zero_ = false;
    std::uint64_t zero_value_ = 0;
};

}  // namespace kleak::core
