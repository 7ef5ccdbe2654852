#include "unseen_free_slots.h"

namespace kleak::core {

void UnseenFreeSlots::freed(std::uint64_t ptr, std::uint64_t now_ns) {
    if (now_ns >= generation_start_ns_ + kGenerationNs) rotate(now_ns);
    if (generations_[0].size() >= kMaxPerGeneration) {
        ++dropped_;
        return;
    }
    generations_[0].insert(ptr);
    filter_[bit(ptr) / 64] |= std::uint64_t{1} << (bit(ptr) % 64);
}

bool UnseenFreeSlots::take_slow(std::uint64_t ptr) {
    for (auto& generation : generations_)
        if (generation.erase(ptr)) return true;
    return false;  // another slot with the same filter bit
}

void UnseenFreeSlots::rotate(std::uint64_t now_ns) {
    generations_[1] = std::move(generations_[0]);
    generations_[0].clear();
    generation_start_ns_ = now_ns;
    filter_.fill(0);
    for (const std::uint64_t ptr : generations_[1]) filter_[bit(ptr) / 64] |= std::uint64_t{1} << (bit(ptr) % 64);
}

std::size_t UnseenFreeSlots::memory_bytes() const {
    std::size_t bytes = sizeof(filter_);
    for (const auto& generation : generations_) bytes += generation.capacity() * (sizeof(std::uint64_t) + 1);
    return bytes;
}

void UnseenFreeSlots::clear() {
    for (auto& generation : generations_) generation.clear();
    generation_start_ns_ = 0;
    filter_.fill(0);
    dropped_ = 0;
}

}  // namespace kleak::core
