// PointerTable: the tracker's open-addressing pointer -> value map, against
// std::unordered_map on random operations dense enough to wrap clusters
// around the end of the slot array and shift entries back on erase.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <unordered_map>

#include "core/pointer_table.h"

namespace kleak::core {
namespace {

std::map<std::uint64_t, std::uint64_t> contents(const PointerTable& table) {
    std::map<std::uint64_t, std::uint64_t> out;
    table.for_each([&](std::uint64_t key, std::uint64_t value) { EXPECT_TRUE(out.emplace(key, value).second); });
    return out;
}

TEST(PointerTable, InsertFindErase) {
    PointerTable table;
    EXPECT_EQ(table.find(0x1000), nullptr);
    auto [value, inserted] = table.try_emplace(0x1000, 7);
    EXPECT_TRUE(inserted);
    EXPECT_EQ(*value, 7u);
    auto [again, inserted_again] = table.try_emplace(0x1000, 9);
    EXPECT_FALSE(inserted_again);
    EXPECT_EQ(*again, 7u);  // untouched
    *again = 11;
    EXPECT_EQ(*table.find(0x1000), 11u);
    std::uint64_t taken = 0;
    EXPECT_TRUE(table.erase(0x1000, &taken));
    EXPECT_EQ(taken, 11u);
    EXPECT_FALSE(table.erase(0x1000));
    EXPECT_EQ(table.size(), 0u);
}

TEST(PointerTable, KeyZeroIsAnOrdinaryKey) {
    PointerTable table;
    EXPECT_EQ(table.find(0), nullptr);
    EXPECT_TRUE(table.try_emplace(0, 5).second);
    EXPECT_FALSE(table.try_emplace(0, 6).second);
    EXPECT_EQ(*table.find(0), 5u);
    EXPECT_EQ(table.size(), 1u);
    EXPECT_EQ(contents(table), (std::map<std::uint64_t, std::uint64_t>{{0, 5}}));
    std::uint64_t taken = 0;
    EXPECT_TRUE(table.erase(0, &taken));
    EXPECT_EQ(taken, 5u);
    EXPECT_FALSE(table.erase(0));
    EXPECT_EQ(table.size(), 0u);
}

TEST(PointerTable, GrowsByDoublingPastThreeQuartersFull) {
    PointerTable table;
    EXPECT_EQ(table.capacity(), 16u);
    for (std::uint64_t i = 1; i <= 12; ++i) table.try_emplace(i * 64, i);
    EXPECT_EQ(table.capacity(), 16u);
    table.try_emplace(13 * 64, 13);
    EXPECT_EQ(table.capacity(), 32u);
    EXPECT_EQ(table.memory_bytes(), 32u * 16);
    for (std::uint64_t i = 1; i <= 13; ++i) EXPECT_EQ(*table.find(i * 64), i);
    table.clear();
    EXPECT_EQ(table.capacity(), 16u);
    EXPECT_EQ(table.size(), 0u);
    EXPECT_EQ(table.find(64), nullptr);
}

TEST(PointerTable, ForEachSlotVisitsEverySlotAndPointerZeroOnce) {
    PointerTable table;
    for (std::uint64_t i = 1; i <= 40; ++i) table.try_emplace(i * 64, i);
    table.try_emplace(0, 99);
    ASSERT_EQ(table.capacity(), 64u);
    std::size_t slots = 0;
    std::map<std::uint64_t, std::uint64_t> seen;
    table.for_each_slot([&](std::uint64_t key, std::uint64_t value, bool occupied) {
        ++slots;
        if (!occupied) {
            EXPECT_EQ(key, 0u);
            EXPECT_EQ(value, 0u);
            return;
        }
        EXPECT_TRUE(seen.emplace(key, value).second) << key;
    });
    EXPECT_EQ(slots, table.capacity() + 1);  // every slot, and pointer 0
    EXPECT_EQ(seen, contents(table));
}

TEST(PointerTable, MatchesAReferenceMapUnderRandomChurn) {
    for (std::uint64_t seed : {1, 2, 3}) {
        std::mt19937_64 rng(seed);
        PointerTable table;
        std::unordered_map<std::uint64_t, std::uint64_t> reference;
        // Few distinct keys, so the table stays near its load limit and
        // operations hit present and absent keys alike; both aligned kernel
        // pointers and arbitrary values, and 0.
        const auto key = [&]() -> std::uint64_t {
            const std::uint64_t r = rng() % 1500;
            if (r == 0) return 0;
            return r % 2 ? 0xffff888000000000ULL + r * 64 : r * 0x9E3779B97F4A7C15ULL;
        };
        for (int op = 0; op < 200'000; ++op) {
            const std::uint64_t k = key();
            switch (rng() % 3) {
                case 0: {
                    const std::uint64_t v = rng();
                    const auto [value, inserted] = table.try_emplace(k, v);
                    const auto [it, ref_inserted] = reference.try_emplace(k, v);
                    ASSERT_EQ(inserted, ref_inserted);
                    ASSERT_EQ(*value, it->second);
                    break;
                }
                case 1: {
                    std::uint64_t taken = 0;
                    const bool erased = table.erase(k, &taken);
                    const auto it = reference.find(k);
                    ASSERT_EQ(erased, it != reference.end()) << "op " << op;
                    if (erased) {
                        ASSERT_EQ(taken, it->second);
                        reference.erase(it);
                    }
                    break;
                }
                default: {
                    const std::uint64_t* value = table.find(k);
                    const auto it = reference.find(k);
                    ASSERT_EQ(value != nullptr, it != reference.end()) << "op " << op;
                    if (value != nullptr) {
                        ASSERT_EQ(*value, it->second);
                    }
                }
            }
            ASSERT_EQ(table.size(), reference.size());
        }
        EXPECT_GT(reference.size(), 300u);
        EXPECT_EQ(contents(table), (std::map<std::uint64_t, std::uint64_t>(reference.begin(), reference.end())));
    }
}

// reserve(): room for that many entries without growing, what is in the
// table kept; the entries of another table, inserted in its slot order (as a
// state image loads them), land without growing.
TEST(PointerTable, ReserveKeepsEntriesAndPreventsGrowth) {
    PointerTable a;
    for (std::uint64_t k = 1; k <= 1000; ++k) a.try_emplace(k * 64, k);
    PointerTable b;
    b.try_emplace(0, 7);
    b.try_emplace(0xabc, 8);
    b.reserve(1002);
    const std::size_t capacity = b.capacity();
    EXPECT_GE(capacity / 4 * 3, 1002u);
    a.for_each([&](std::uint64_t key, std::uint64_t value) { b.try_emplace(key, value); });
    EXPECT_EQ(b.capacity(), capacity);
    EXPECT_EQ(b.size(), 1002u);
    EXPECT_EQ(*b.find(0), 7u);
    EXPECT_EQ(*b.find(0xabc), 8u);
    for (std::uint64_t k = 1; k <= 1000; ++k) ASSERT_EQ(*b.find(k * 64), k);
    b.reserve(10);  // never shrinks
    EXPECT_EQ(b.capacity(), capacity);
}

}  // namespace
}  // namespace kleak::core
