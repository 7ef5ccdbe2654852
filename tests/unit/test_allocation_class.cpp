// The packed allocation (class id + birth unit) and the class table.
#include <gtest/gtest.h>

#include "core/allocation_class.h"

namespace kleak::core {
namespace {

constexpr std::uint64_t kUnit = std::uint64_t{1} << 20;

TEST(AllocationClass, PacksClassAndBirthUnit) {
    const std::uint64_t packed = pack_allocation(0xABCDEF, 0x12'3456'789A);
    EXPECT_EQ(packed, 0x1234'5678'9AAB'CDEFULL);
    EXPECT_EQ(class_of(packed), 0xABCDEFu);
    EXPECT_EQ(unit_of(packed), 0x12'3456'789AULL);
    // Time in the high bits: older always compares lower, whatever the class.
    EXPECT_LT(pack_allocation(kOverflowClass, 5), pack_allocation(0, 6));
}

TEST(AllocationClass, BirthRoundsUpToTheLastNanosecondOfItsUnit) {
    EXPECT_EQ(rounded_birth_ns(0), kUnit - 1);
    EXPECT_EQ(rounded_birth_ns(kUnit - 1), kUnit - 1);
    EXPECT_EQ(rounded_birth_ns(kUnit), 2 * kUnit - 1);
    EXPECT_EQ(rounded_birth_ns(3'600'000'000'000), 3'600'000'000'000 / kUnit * kUnit + kUnit - 1);
    // 40 bits of units: 36 years; later times saturate instead of wrapping.
    EXPECT_EQ(birth_unit(~std::uint64_t{0}), (std::uint64_t{1} << 40) - 1);
    EXPECT_EQ(rounded_birth_ns(~std::uint64_t{0}), (std::uint64_t{1} << 60) - 1);
}

TEST(AllocationClass, UnitsWhollyByCountsOnlyFinishedUnits) {
    EXPECT_EQ(units_wholly_by(0), 0u);
    EXPECT_EQ(units_wholly_by(kUnit - 2), 0u);
    EXPECT_EQ(units_wholly_by(kUnit - 1), 1u);  // unit 0 is wholly at or before kUnit - 1
    EXPECT_EQ(units_wholly_by(kUnit), 1u);
    EXPECT_EQ(units_wholly_by(5 * kUnit + 17), 5u);
    EXPECT_EQ(units_wholly_by(~std::uint64_t{0}), kMaxBirthUnit + 1);
}

TEST(ClassTable, InternsDensely) {
    ClassTable table;
    EXPECT_EQ(table.intern(3, 64), 0u);
    EXPECT_EQ(table.intern(3, 128), 1u);
    EXPECT_EQ(table.intern(4, 64), 2u);
    EXPECT_EQ(table.intern(3, 64), 0u);
    EXPECT_EQ(table.size(), 3u);
    EXPECT_EQ(table[1].site, 3u);
    EXPECT_EQ(table[1].bytes_alloc, 128u);
    EXPECT_EQ(table[2].site, 4u);
    table.clear();
    EXPECT_EQ(table.size(), 0u);
    EXPECT_EQ(table.intern(4, 64), 0u);  // the cache forgot too
}

TEST(ClassTable, StaysRightPastItsCache) {
    // Many more pairs than cache slots: evictions and collisions must not
    // change an id.
    ClassTable table;
    for (int round = 0; round < 3; ++round) {
        for (std::uint32_t site = 0; site < 100; ++site) {
            for (std::uint32_t size = 1; size <= 50; ++size) ASSERT_EQ(table.intern(site, size * 8), site * 50 + size - 1);
        }
    }
    EXPECT_EQ(table.size(), 5000u);
}

TEST(ClassTable, FullTableAnswersOverflowForNewPairsOnly) {
    ClassTable table(2);
    EXPECT_EQ(table.intern(1, 8), 0u);
    EXPECT_EQ(table.intern(1, 16), 1u);
    EXPECT_EQ(table.intern(2, 8), kOverflowClass);
    EXPECT_EQ(table.intern(2, 8), kOverflowClass);
    EXPECT_EQ(table.intern(1, 16), 1u);
    EXPECT_EQ(table.size(), 2u);
    // The limit never exceeds what 24 bits can name.
    EXPECT_EQ(kMaxClasses, (1u << 24) - 1);
}

}  // namespace
}  // namespace kleak::core
