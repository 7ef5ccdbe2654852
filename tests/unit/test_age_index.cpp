// The age index (daemon/core/age_index.h): live allocations counted per
// (birth epoch, class), queried as "born in a unit before U".
//
// Exact scenarios pin down epoch boundaries, late records, removal and
// merging; a model-based randomized test checks, against a plain multiset of
// live (class, unit) pairs, that a query never counts an allocation younger
// than asked and leaves out only those born within the documented slack of
// the threshold: max(kBaseUnits, age / kAgeRatio), age measured from the open
// epoch's end.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "core/age_index.h"
#include "test_helpers.h"

namespace kleak::core {
namespace {

constexpr std::uint64_t kBase = AgeIndex::kBaseUnits;
constexpr std::uint64_t kRatio = AgeIndex::kAgeRatio;
constexpr std::uint64_t kAll = std::numeric_limits<std::uint64_t>::max();

static_assert(kBase == 16 && kRatio == 16, "the exact scenarios below assume 16-unit base epochs and a ratio of 16");

struct Found {
    std::uint64_t count;
    std::uint64_t oldest_unit;
    bool operator==(const Found&) const = default;
};

void PrintTo(const Found& f, std::ostream* os) { *os << "{count " << f.count << ", oldest_unit " << f.oldest_unit << "}"; }

// The query's answer per class; a class reported twice is a failure.
std::map<ClassId, Found> born_before(const AgeIndex& index, std::uint64_t units) {
    std::map<ClassId, Found> out;
    index.for_each_class_born_before(units, [&](ClassId cls, std::uint64_t count, std::uint64_t oldest_unit) {
        const bool first = out.emplace(cls, Found{count, oldest_unit}).second;
        EXPECT_TRUE(first) << "class " << cls << " reported twice for units " << units;
    });
    return out;
}

using Answer = std::map<ClassId, Found>;

// --- exact scenarios -------------------------------------------------------------

TEST(AgeIndex, EmptyIndexReportsNothingAndRemovesNothing) {
    AgeIndex index;
    EXPECT_EQ(index.live(), 0u);
    EXPECT_EQ(index.epoch_count(), 0u);
    EXPECT_TRUE(born_before(index, kAll).empty());
    EXPECT_FALSE(index.remove(0, 0));
    EXPECT_FALSE(index.remove(3, 12345));
    EXPECT_EQ(index.live(), 0u);
    EXPECT_EQ(index.epoch_count(), 0u);
}

TEST(AgeIndex, BaseEpochCountsOnlyOnceTheBoundaryReachesItsEnd) {
    AgeIndex index;
    index.add(1, 5);
    index.add(1, 7);
    index.add(2, 15);
    EXPECT_EQ(index.live(), 3u);
    EXPECT_EQ(index.epoch_count(), 1u);  // the open epoch [0, 16)

    // Still open: counted all the same once its end is reached.
    EXPECT_TRUE(born_before(index, 0).empty());
    EXPECT_TRUE(born_before(index, 8).empty());  // 5 and 7 are below 8, but the epoch ends at 16
    EXPECT_TRUE(born_before(index, 15).empty());
    EXPECT_EQ(born_before(index, 16), (Answer{{1, {2, 15}}, {2, {1, 15}}}));
    EXPECT_EQ(born_before(index, kAll), (Answer{{1, {2, 15}}, {2, {1, 15}}}));

    // Unit 16 opens [16, 32) and closes [0, 16): the answers at 15 and 16 stay.
    index.add(1, 16);
    EXPECT_EQ(index.epoch_count(), 2u);
    EXPECT_TRUE(born_before(index, 15).empty());
    EXPECT_EQ(born_before(index, 16), (Answer{{1, {2, 15}}, {2, {1, 15}}}));
    EXPECT_EQ(born_before(index, 31), (Answer{{1, {2, 15}}, {2, {1, 15}}}));
    EXPECT_EQ(born_before(index, 32), (Answer{{1, {3, 15}}, {2, {1, 15}}}));
}

TEST(AgeIndex, EpochsAreAlignedToBaseUnitsNotToTheFirstAllocation) {
    AgeIndex index;
    index.add(4, 37);  // opens [32, 48), not [37, 53)
    EXPECT_TRUE(born_before(index, 47).empty());
    EXPECT_EQ(born_before(index, 48), (Answer{{4, {1, 47}}}));
    index.add(4, 47);  // same epoch
    EXPECT_EQ(index.epoch_count(), 1u);
    index.add(4, 48);  // the next one
    EXPECT_EQ(index.epoch_count(), 2u);
    EXPECT_EQ(born_before(index, 48), (Answer{{4, {2, 47}}}));
    EXPECT_EQ(born_before(index, 63), (Answer{{4, {2, 47}}}));
    EXPECT_EQ(born_before(index, 64), (Answer{{4, {3, 47}}}));
}

TEST(AgeIndex, OldestUnitIsTheLastUnitOfTheOldestEpochHoldingTheClass) {
    AgeIndex index;
    index.add(1, 40);   // [32, 48)
    index.add(2, 70);   // [64, 80)
    index.add(1, 100);  // [96, 112)
    index.add(2, 130);  // [128, 144), open
    EXPECT_EQ(born_before(index, 48), (Answer{{1, {1, 47}}}));
    EXPECT_EQ(born_before(index, 80), (Answer{{1, {1, 47}}, {2, {1, 79}}}));
    EXPECT_EQ(born_before(index, 144), (Answer{{1, {2, 47}}, {2, {2, 79}}}));
    // Once class 1's oldest is gone its oldest epoch is the next one holding it.
    ASSERT_TRUE(index.remove(1, 40));
    EXPECT_EQ(born_before(index, 144), (Answer{{1, {1, 111}}, {2, {2, 79}}}));
    EXPECT_EQ(born_before(index, 80), (Answer{{2, {1, 79}}}));
}

TEST(AgeIndex, RemoveFindsTheAllocationAfterItsEpochClosed) {
    AgeIndex index;
    index.add(1, 5);
    index.add(1, 200);  // closes [0, 16)
    EXPECT_EQ(index.live(), 2u);
    EXPECT_TRUE(index.remove(1, 5));
    EXPECT_EQ(index.live(), 1u);
    EXPECT_EQ(born_before(index, 16), Answer{});
    EXPECT_EQ(born_before(index, kAll), (Answer{{1, {1, 207}}}));
    // The emptied closed epoch may stay, but counts nothing.
    EXPECT_LE(index.epoch_count(), 2u);
}

TEST(AgeIndex, RemoveWithTheWrongClassFailsAndChangesNothing) {
    AgeIndex index;
    index.add(1, 5);
    index.add(2, 6);
    index.add(1, 300);  // closes [0, 16); [288, 304) is open
    index.add(2, 301);
    const Answer before = born_before(index, kAll);
    ASSERT_EQ(before, (Answer{{1, {2, 15}}, {2, {2, 15}}}));

    EXPECT_FALSE(index.remove(3, 5));        // closed epoch, class never seen
    EXPECT_FALSE(index.remove(3, 300));      // open epoch, class never seen
    EXPECT_FALSE(index.remove(100000, 5));   // class id past every one seen
    EXPECT_FALSE(index.remove(100000, 300));
    EXPECT_FALSE(index.remove(1, 100));      // class 1, but no epoch holds unit 100
    EXPECT_FALSE(index.remove(1, 304));      // past the open epoch
    EXPECT_FALSE(index.remove(1, 100000));
    EXPECT_EQ(index.live(), 4u);
    EXPECT_EQ(born_before(index, kAll), before);

    // Class 2 leaves [0, 16): removing it again there fails, class 1 is untouched.
    EXPECT_TRUE(index.remove(2, 6));
    EXPECT_FALSE(index.remove(2, 6));
    EXPECT_FALSE(index.remove(2, 5));  // any unit of that epoch: no class 2 is counted in it
    EXPECT_EQ(index.live(), 3u);
    EXPECT_EQ(born_before(index, 16), (Answer{{1, {1, 15}}}));

    // The same in the open epoch.
    EXPECT_TRUE(index.remove(2, 301));
    EXPECT_FALSE(index.remove(2, 301));
    EXPECT_EQ(index.live(), 2u);
    EXPECT_EQ(born_before(index, kAll), (Answer{{1, {2, 15}}}));
}

TEST(AgeIndex, RemoveOfAnAlreadyRemovedAllocationFails) {
    AgeIndex index;
    index.add(7, 10);
    index.add(7, 11);  // same class, same epoch: two counted
    ASSERT_TRUE(index.remove(7, 10));
    ASSERT_TRUE(index.remove(7, 11));
    EXPECT_FALSE(index.remove(7, 10));
    EXPECT_FALSE(index.remove(7, 11));
    EXPECT_EQ(index.live(), 0u);
    EXPECT_TRUE(born_before(index, kAll).empty());

    // After the epoch closed, too.
    index.add(7, 20);
    index.add(7, 50);  // closes [16, 32)
    ASSERT_TRUE(index.remove(7, 20));
    EXPECT_FALSE(index.remove(7, 20));
    EXPECT_EQ(index.live(), 1u);
    EXPECT_EQ(born_before(index, kAll), (Answer{{7, {1, 63}}}));
}

TEST(AgeIndex, EpochEmptiedBeforeClosingIsDropped) {
    AgeIndex index;
    index.add(1, 100);  // [96, 112)
    ASSERT_TRUE(index.remove(1, 100));
    index.add(1, 200);  // closes [96, 112): empty, left out
    EXPECT_EQ(index.epoch_count(), 1u);
    EXPECT_FALSE(index.remove(1, 100));
    EXPECT_EQ(index.live(), 1u);
    EXPECT_EQ(born_before(index, kAll), (Answer{{1, {1, 207}}}));

    // A late record in the dropped epoch's range gets a base epoch of its own.
    index.add(2, 100);
    EXPECT_EQ(index.epoch_count(), 2u);
    EXPECT_EQ(index.live(), 2u);
    EXPECT_TRUE(born_before(index, 111).empty());
    EXPECT_EQ(born_before(index, 112), (Answer{{2, {1, 111}}}));
    EXPECT_TRUE(index.remove(2, 100));
    EXPECT_EQ(index.live(), 1u);
}

TEST(AgeIndex, LateAddIntoAGapMakesABaseEpochThatRemoveFinds) {
    AgeIndex index;
    index.add(1, 100);  // [96, 112)
    index.add(1, 500);  // closes it; [496, 512) open
    ASSERT_EQ(index.epoch_count(), 2u);

    index.add(2, 300);  // late, in the gap between 112 and 496: [288, 304)
    EXPECT_EQ(index.epoch_count(), 3u);
    EXPECT_EQ(index.live(), 3u);
    EXPECT_EQ(born_before(index, 112), (Answer{{1, {1, 111}}}));
    EXPECT_EQ(born_before(index, 303), (Answer{{1, {1, 111}}}));
    EXPECT_EQ(born_before(index, 304), (Answer{{1, {1, 111}}, {2, {1, 303}}}));
    EXPECT_EQ(born_before(index, 512), (Answer{{1, {2, 111}}, {2, {1, 303}}}));

    // A second late record in the same base range joins that epoch.
    index.add(2, 289);
    EXPECT_EQ(index.epoch_count(), 3u);
    EXPECT_EQ(born_before(index, 304), (Answer{{1, {1, 111}}, {2, {2, 303}}}));
    // One just past it gets its own, [304, 320).
    index.add(2, 304);
    EXPECT_EQ(index.epoch_count(), 4u);
    EXPECT_EQ(born_before(index, 319), (Answer{{1, {1, 111}}, {2, {2, 303}}}));
    EXPECT_EQ(born_before(index, 320), (Answer{{1, {1, 111}}, {2, {3, 303}}}));

    // The late epoch is [288, 304), not stretched back to 112: no epoch holds 287 or 112.
    EXPECT_FALSE(index.remove(2, 287));
    EXPECT_FALSE(index.remove(2, 112));
    EXPECT_FALSE(index.remove(1, 300));  // the late epoch holds no class 1
    // Another late record further back gets its own base epoch, [240, 256).
    index.add(2, 250);
    EXPECT_EQ(index.epoch_count(), 5u);
    EXPECT_EQ(born_before(index, 255), (Answer{{1, {1, 111}}}));
    EXPECT_EQ(born_before(index, 256), (Answer{{1, {1, 111}}, {2, {1, 255}}}));
    EXPECT_EQ(born_before(index, 304), (Answer{{1, {1, 111}}, {2, {3, 255}}}));
    EXPECT_TRUE(index.remove(2, 250));
    EXPECT_TRUE(index.remove(2, 300));
    EXPECT_TRUE(index.remove(2, 289));
    EXPECT_FALSE(index.remove(2, 300));
    EXPECT_TRUE(index.remove(2, 304));
    EXPECT_EQ(index.live(), 2u);
    EXPECT_EQ(born_before(index, kAll), (Answer{{1, {2, 111}}}));
}

TEST(AgeIndex, LateAddIntoAClosedEpochJoinsIt) {
    AgeIndex index;
    index.add(1, 100);  // [96, 112)
    index.add(1, 200);  // closes it
    index.add(2, 97);   // late, inside [96, 112)
    index.add(2, 111);
    EXPECT_EQ(index.epoch_count(), 2u);
    EXPECT_EQ(index.live(), 4u);
    EXPECT_TRUE(born_before(index, 111).empty());
    EXPECT_EQ(born_before(index, 112), (Answer{{1, {1, 111}}, {2, {2, 111}}}));
    EXPECT_TRUE(index.remove(2, 111));
    EXPECT_TRUE(index.remove(2, 97));
    EXPECT_FALSE(index.remove(2, 97));
    EXPECT_EQ(born_before(index, 112), (Answer{{1, {1, 111}}}));
}

TEST(AgeIndex, LateAddInsideTheOpenEpochIsNotLate) {
    AgeIndex index;
    index.add(1, 40);  // [32, 48)
    index.add(1, 33);  // earlier unit, same open epoch
    EXPECT_EQ(index.epoch_count(), 1u);
    EXPECT_EQ(born_before(index, 48), (Answer{{1, {2, 47}}}));
    EXPECT_TRUE(index.remove(1, 33));
    EXPECT_TRUE(index.remove(1, 40));
    EXPECT_FALSE(index.remove(1, 40));
}

TEST(AgeIndex, LateAddOlderThanEverything) {
    AgeIndex index;
    index.add(1, 1000);  // [992, 1008)
    index.add(1, 2000);  // [2000, 2016) open
    index.add(3, 5);     // before every epoch: [0, 16)
    EXPECT_EQ(index.epoch_count(), 3u);
    EXPECT_TRUE(born_before(index, 15).empty());
    EXPECT_EQ(born_before(index, 16), (Answer{{3, {1, 15}}}));
    EXPECT_EQ(born_before(index, 1008), (Answer{{1, {1, 1007}}, {3, {1, 15}}}));
    EXPECT_EQ(born_before(index, kAll), (Answer{{1, {2, 1007}}, {3, {1, 15}}}));
    EXPECT_FALSE(index.remove(3, 16));  // [0, 16) is not stretched to the next epoch
    EXPECT_FALSE(index.remove(3, 991));
    EXPECT_TRUE(index.remove(3, 5));
    EXPECT_FALSE(index.remove(3, 5));
    EXPECT_EQ(born_before(index, kAll), (Answer{{1, {2, 1007}}}));
    EXPECT_EQ(index.live(), 2u);
}

TEST(AgeIndex, LateAddWithOnlyTheOpenEpochBeforeIt) {
    AgeIndex index;
    index.add(1, 1000);  // [992, 1008) open, no closed epoch yet
    index.add(2, 980);   // late: [976, 992), cut at the open epoch
    EXPECT_EQ(index.epoch_count(), 2u);
    EXPECT_TRUE(born_before(index, 991).empty());
    EXPECT_EQ(born_before(index, 992), (Answer{{2, {1, 991}}}));
    EXPECT_EQ(born_before(index, 1008), (Answer{{1, {1, 1007}}, {2, {1, 991}}}));
    EXPECT_TRUE(index.remove(2, 980));
    EXPECT_TRUE(index.remove(1, 1000));
    EXPECT_EQ(index.live(), 0u);
}

TEST(AgeIndex, LargeClassIdsAreCounted) {
    AgeIndex index;
    const ClassId big = kMaxClasses - 1;
    index.add(big, 3);
    index.add(0, 3);
    index.add(big, 20);  // closes [0, 16)
    EXPECT_EQ(born_before(index, 16), (Answer{{0, {1, 15}}, {big, {1, 15}}}));
    EXPECT_EQ(born_before(index, 32), (Answer{{0, {1, 15}}, {big, {2, 15}}}));
    EXPECT_TRUE(index.remove(big, 20));
    EXPECT_TRUE(index.remove(big, 3));
    EXPECT_FALSE(index.remove(big, 3));
    EXPECT_EQ(born_before(index, kAll), (Answer{{0, {1, 15}}}));
}

TEST(AgeIndex, ClearResetsEverything) {
    AgeIndex index;
    for (std::uint64_t u = 0; u < 1000; u += 7) index.add(static_cast<ClassId>(u % 5), u);
    index.add(9, 3);  // a late record too
    ASSERT_GT(index.live(), 0u);
    ASSERT_GT(index.epoch_count(), 1u);

    index.clear();
    EXPECT_EQ(index.live(), 0u);
    EXPECT_EQ(index.epoch_count(), 0u);
    EXPECT_TRUE(born_before(index, kAll).empty());
    EXPECT_FALSE(index.remove(0, 0));
    EXPECT_FALSE(index.remove(9, 3));
    EXPECT_FALSE(index.remove(1, 995));

    // Usable again, from an earlier unit than before (not a late record now).
    index.add(2, 50);  // [48, 64) open
    EXPECT_EQ(index.live(), 1u);
    EXPECT_EQ(index.epoch_count(), 1u);
    EXPECT_TRUE(born_before(index, 63).empty());
    EXPECT_EQ(born_before(index, 64), (Answer{{2, {1, 63}}}));
    index.add(2, 10);  // now late: [0, 16)
    EXPECT_EQ(index.epoch_count(), 2u);
    EXPECT_EQ(born_before(index, 16), (Answer{{2, {1, 15}}}));
    EXPECT_TRUE(index.remove(2, 10));
    EXPECT_TRUE(index.remove(2, 50));
    EXPECT_EQ(index.live(), 0u);
}

// --- merging ----------------------------------------------------------------------

// Two closed neighbours merge iff merged length * kAgeRatio <= open end -
// merged end, checked each time an epoch closes (age_index.h: "its age: how
// many units lie between its end and the newest allocation"): ages from the
// end of the epoch just opened (a first version measured them from the one
// just closed, and merged one close late).
TEST(AgeIndex, NeighboursMergeExactlyAtTheAgeRatio) {
    {
        AgeIndex index;
        index.add(1, 0);    // [0, 16)
        index.add(1, 16);   // [16, 32)
        index.add(1, 528);  // open [528, 544): 32 * 16 = 512 <= 544 - 32
        EXPECT_EQ(index.epoch_count(), 2u);  // [0, 32) and the open one
        EXPECT_TRUE(born_before(index, 16).empty());  // unit 0 is no longer told apart
        EXPECT_TRUE(born_before(index, 31).empty());
        EXPECT_EQ(born_before(index, 32), (Answer{{1, {2, 31}}}));
        EXPECT_TRUE(index.remove(1, 0));
        EXPECT_TRUE(index.remove(1, 16));
        EXPECT_FALSE(index.remove(1, 16));
    }
    {
        AgeIndex index;
        index.add(1, 0);
        index.add(1, 16);
        index.add(1, 527);  // open [512, 528): 512 > 528 - 32, no merge
        EXPECT_EQ(index.epoch_count(), 3u);
        EXPECT_EQ(born_before(index, 16), (Answer{{1, {1, 15}}}));
        EXPECT_EQ(born_before(index, 32), (Answer{{1, {2, 15}}}));
    }
}

// The same rule where the lag above cannot matter: the merge is due (by
// either measure) once a later epoch has closed as well.
TEST(AgeIndex, NeighboursMergeOnceTheyAreOldEnough) {
    {
        AgeIndex index;
        index.add(1, 0);    // [0, 16)
        index.add(1, 16);   // [16, 32)
        index.add(1, 528);  // [528, 544)
        index.add(1, 544);  // closes [528, 544), open end 560 (544 with the lag): [0, 32) is due either way
        EXPECT_EQ(index.epoch_count(), 3u);  // [0, 32), [528, 544), open [544, 560)
        EXPECT_TRUE(born_before(index, 31).empty());
        EXPECT_EQ(born_before(index, 32), (Answer{{1, {2, 31}}}));
        EXPECT_EQ(born_before(index, 544), (Answer{{1, {3, 31}}}));
        EXPECT_EQ(born_before(index, 560), (Answer{{1, {4, 31}}}));
    }
    {
        // Not due by either measure: at the second close the open end is
        // 512 (496 with the lag), and 32 * 16 > 512 - 32.
        AgeIndex index;
        index.add(1, 0);
        index.add(1, 16);
        index.add(1, 480);  // [480, 496)
        index.add(1, 496);  // open [496, 512)
        EXPECT_EQ(index.epoch_count(), 4u);
        EXPECT_TRUE(born_before(index, 15).empty());
        EXPECT_EQ(born_before(index, 16), (Answer{{1, {1, 15}}}));
        EXPECT_EQ(born_before(index, 32), (Answer{{1, {2, 15}}}));
        EXPECT_EQ(born_before(index, 512), (Answer{{1, {4, 15}}}));
    }
}

TEST(AgeIndex, MergingSpansGapsAndLateRecordsLandInTheMergedEpoch) {
    AgeIndex index;
    index.add(1, 0);     // [0, 16)
    index.add(2, 100);   // [96, 112): merged length would be 112 (needs age 112 * 16 = 1792)
    index.add(3, 1904);  // [1904, 1920)
    index.add(3, 1920);  // open [1920, 1936); ages >= 1808: [0, 16) and [96, 112) merge into [0, 112)
    EXPECT_EQ(index.epoch_count(), 3u);  // [0, 112), [1904, 1920), the open one
    EXPECT_TRUE(born_before(index, 16).empty());
    EXPECT_TRUE(born_before(index, 111).empty());
    EXPECT_EQ(born_before(index, 112), (Answer{{1, {1, 111}}, {2, {1, 111}}}));
    // A late record in the former gap lands in the merged epoch.
    index.add(4, 50);
    EXPECT_EQ(index.epoch_count(), 3u);
    EXPECT_EQ(born_before(index, 112), (Answer{{1, {1, 111}}, {2, {1, 111}}, {4, {1, 111}}}));
    EXPECT_TRUE(index.remove(4, 50));
    EXPECT_TRUE(index.remove(1, 0));
    EXPECT_TRUE(index.remove(2, 100));
    EXPECT_FALSE(index.remove(2, 100));
    EXPECT_EQ(index.epoch_count(), 3u);  // emptied after closing: kept, counts nothing
    EXPECT_EQ(born_before(index, kAll), (Answer{{3, {2, 1919}}}));
}

TEST(AgeIndex, OldBaseEpochsMergeWhenTimePassesWithTotalsExact) {
    AgeIndex index;
    constexpr std::uint64_t kEpochs = 64;
    std::map<ClassId, std::uint64_t> expected;
    // One allocation in each of 64 consecutive base epochs, [0, 1024).
    for (std::uint64_t e = 0; e < kEpochs; ++e) {
        const ClassId cls = static_cast<ClassId>(e % 3);
        index.add(cls, e * kBase + e % kBase);
        ++expected[cls];
    }
    // Young: only a few could merge so far (the newest are at most 1024 units old).
    const std::size_t before = index.epoch_count();
    EXPECT_GT(before, 30u);

    // 10^6 units later two epochs close: every epoch of [0, 1024) has age
    // >= 10^6 - 1024 >= 16 * 1024, so they all merge into one.
    constexpr std::uint64_t kLater = 1'000'000;  // a multiple of 16
    index.add(5, kLater);
    index.add(6, kLater + kBase);
    EXPECT_EQ(index.epoch_count(), 3u);  // [0, 1024), [kLater, +16), the open one
    EXPECT_EQ(index.live(), kEpochs + 2);

    Answer all_old;
    for (const auto& [cls, n] : expected) all_old[cls] = Found{n, 1023};
    EXPECT_TRUE(born_before(index, 1023).empty());
    EXPECT_TRUE(born_before(index, 500).empty());
    EXPECT_EQ(born_before(index, 1024), all_old);
    EXPECT_EQ(born_before(index, kLater), all_old);
    Answer with_5 = all_old;
    with_5[5] = Found{1, kLater + kBase - 1};
    EXPECT_EQ(born_before(index, kLater + kBase), with_5);
    Answer everything = with_5;
    everything[6] = Found{1, kLater + 2 * kBase - 1};
    EXPECT_EQ(born_before(index, kAll), everything);

    // Every allocation is still found in the merged epoch.
    for (std::uint64_t e = 0; e < kEpochs; ++e) EXPECT_TRUE(index.remove(static_cast<ClassId>(e % 3), e * kBase + e % kBase)) << e;
    EXPECT_EQ(index.live(), 2u);
    EXPECT_TRUE(born_before(index, 1024).empty());
    EXPECT_EQ(born_before(index, kAll), (Answer{{5, {1, kLater + kBase - 1}}, {6, {1, kLater + 2 * kBase - 1}}}));
}

// Allocations every unit for a long time: the epoch count grows like
// kAgeRatio * ln(age), not with the number of base epochs.
TEST(AgeIndex, SteadyStreamKeepsFewEpochs) {
    AgeIndex index;
    constexpr std::uint64_t kUnits = 2'000'000;  // 125000 base epochs
    for (std::uint64_t u = 0; u < kUnits; ++u) index.add(static_cast<ClassId>(u % 11), u);
    EXPECT_EQ(index.live(), kUnits);
    EXPECT_LT(index.epoch_count(), 400u) << "epochs: " << index.epoch_count();
    std::uint64_t total = 0;
    for (const auto& [cls, f] : born_before(index, kAll)) total += f.count;
    EXPECT_EQ(total, kUnits);
    // A threshold 1/2 of the way back leaves out at most max(16, age/16) units' worth.
    const std::uint64_t units = kUnits / 2;
    const std::uint64_t slack = std::max<std::uint64_t>(kBase, (kUnits - units) / kRatio);
    total = 0;
    for (const auto& [cls, f] : born_before(index, units)) total += f.count;
    EXPECT_LE(total, units);
    EXPECT_GE(total, units - slack + 1);
}

// --- model-based randomized test -----------------------------------------------------

struct Live {
    ClassId cls;
    std::uint64_t unit;
};

class Model {
public:
    void add(ClassId cls, std::uint64_t unit) {
        entries_.push_back({cls, unit});
        by_class_[cls].insert(unit);
    }
    Live take(std::size_t i) {
        const Live e = entries_[i];
        entries_[i] = entries_.back();
        entries_.pop_back();
        auto& units = by_class_[e.cls];
        units.erase(units.find(e.unit));
        if (units.empty()) by_class_.erase(e.cls);
        return e;
    }
    std::size_t size() const { return entries_.size(); }
    const std::vector<Live>& entries() const { return entries_; }
    const std::map<ClassId, std::multiset<std::uint64_t>>& by_class() const { return by_class_; }
    // Live allocations of cls with a unit in [lo, hi).
    bool any_in(ClassId cls, std::uint64_t lo, std::uint64_t hi) const {
        const auto it = by_class_.find(cls);
        if (it == by_class_.end()) return false;
        const auto u = it->second.lower_bound(lo);
        return u != it->second.end() && *u < hi;
    }
    // Per class: how many have a unit below `below`.
    std::map<ClassId, std::uint64_t> counts_below(std::uint64_t below) const {
        std::map<ClassId, std::uint64_t> out;
        for (const auto& [cls, units] : by_class_) {
            // The multiset is sorted: count up to the first unit not below.
            std::uint64_t n = 0;
            for (auto it = units.begin(); it != units.end() && *it < below; ++it) ++n;
            if (n > 0) out[cls] = n;
        }
        return out;
    }

private:
    std::vector<Live> entries_;  // unordered; the newest tend to sit at the back
    std::map<ClassId, std::multiset<std::uint64_t>> by_class_;
};

// The longest an epoch can be that ends after `after` (so holds a unit at or
// after it): a base or late epoch is at most kBaseUnits long, a merged one at
// most (open end - its end) / kAgeRatio.
std::uint64_t max_epoch_len_ending_after(std::uint64_t open_end, std::uint64_t after) {
    return std::max<std::uint64_t>(kBase, open_end > after ? (open_end - after - 1) / kRatio : 0);
}

struct StreamStats {
    std::uint64_t adds = 0, late_adds = 0, frees = 0, bogus_removes = 0, checks = 0;
    std::size_t max_epochs = 0, max_live = 0;
    std::uint64_t final_now = 0;
};

// Checks one query of `index` against the model, with the open epoch ending
// at open_end (0 if no allocation was ever added).
void check_query(const AgeIndex& index, const Model& model, std::uint64_t open_end, std::uint64_t units,
                 std::map<ClassId, std::uint64_t>* previous_counts) {
    SCOPED_TRACE(testing::Message() << "units " << units << ", open end " << open_end);
    const Answer got = born_before(index, units);
    const auto upper = model.counts_below(units);  // may count no more than these
    // Only the epoch holding `units` is left out, and it holds no unit below
    // units + 1 - its length.
    const std::uint64_t slack = max_epoch_len_ending_after(open_end, units);
    const std::uint64_t lo = units >= slack ? units - slack + 1 : 0;
    const auto lower = units >= open_end ? upper : model.counts_below(lo);  // must count at least these

    for (const auto& [cls, f] : got) {
        ASSERT_GT(f.count, 0u) << "class " << cls << " reported with no allocations";
        const auto up = upper.find(cls);
        ASSERT_TRUE(up != upper.end()) << "class " << cls << " counted " << f.count
                                       << " but the model has none born before " << units;
        EXPECT_LE(f.count, up->second) << "class " << cls << ": counts allocations younger than asked";
        EXPECT_LT(f.oldest_unit, units) << "class " << cls;
        const std::uint64_t oldest = *model.by_class().at(cls).begin();
        EXPECT_GE(f.oldest_unit, oldest) << "class " << cls << ": oldest unit reported older than its oldest allocation";
        if (oldest < lo) {  // the oldest is surely counted, in an epoch no longer than:
            EXPECT_LE(f.oldest_unit, oldest + max_epoch_len_ending_after(open_end, oldest) - 1)
                << "class " << cls << ": oldest unit " << f.oldest_unit << " too far past the oldest allocation " << oldest;
        }
    }
    for (const auto& [cls, n] : lower) {
        const auto it = got.find(cls);
        const std::uint64_t count = it == got.end() ? 0 : it->second.count;
        EXPECT_GE(count, n) << "class " << cls << ": leaves out allocations older than units - slack (slack " << slack
                            << ", lo " << lo << ")";
    }
    if (units >= open_end) {
        // Every epoch ends by then: exact.
        for (const auto& [cls, n] : upper) {
            const auto it = got.find(cls);
            EXPECT_EQ(it == got.end() ? 0 : it->second.count, n) << "class " << cls;
        }
    }
    if (units == 0) {
        EXPECT_TRUE(got.empty());
    }
    // A later threshold never counts fewer (queries come in increasing order).
    if (previous_counts != nullptr) {
        for (const auto& [cls, n] : *previous_counts) {
            const auto it = got.find(cls);
            EXPECT_GE(it == got.end() ? 0 : it->second.count, n) << "class " << cls << ": not monotone in units";
        }
        previous_counts->clear();
        for (const auto& [cls, f] : got) (*previous_counts)[cls] = f.count;
    }
}

// void so that ASSERT_* may end it; fills *out as it goes.
void run_stream(std::uint64_t seed, std::uint64_t ops, StreamStats* out) {
    test::Prng rng(seed);
    AgeIndex index;
    Model model;
    StreamStats& stats = *out;

    constexpr std::uint64_t kClasses = 40;
    constexpr std::uint64_t kLeaky = 5;  // classes 0..4 are rarely freed: they keep very old allocations alive
    auto class_id = [](std::uint64_t i) { return static_cast<ClassId>(i * 37); };  // sparse ids; 1, 2, ... unused

    std::uint64_t now = rng.below(1000);
    std::uint64_t open_end = 0;  // what the index's open epoch must be: set by adds only
    bool any_add = false;
    Live last_late{0, 0};  // the latest late record: failing removes probe around it
    bool any_late = false;

    for (std::uint64_t op = 0; op < ops; ++op) {
        // Time: mostly creeping, sometimes jumps, rarely long idle gaps.
        const std::uint64_t r = rng.below(100000);
        if (r < 60000) {
        } else if (r < 90000) {
            now += rng.between(1, 4);
        } else if (r < 99400) {
            now += rng.between(5, 200);
        } else if (r < 99940) {
            now += rng.between(200, 20000);
        } else if (r < 99997) {
            now += rng.between(20000, 2'000'000);
        } else {
            now += rng.between(2'000'000, 20'000'000);
        }

        const std::uint64_t what = rng.below(1000);
        // Adds outweigh frees until ~3000 are live, then the other way round.
        if (what < (model.size() < 3000 ? 520u : 470u) || model.size() == 0) {
            // An allocation at now, or ~2% a little before it.
            std::uint64_t unit = now;
            if (rng.below(50) == 0) {
                const std::uint64_t back = rng.between(1, 48);
                unit = now >= back ? now - back : 0;
                ++stats.late_adds;
            }
            // 3% leaky, the rest spread over the other classes.
            const ClassId cls =
                rng.below(100) < 3 ? class_id(rng.below(kLeaky)) : class_id(kLeaky + rng.below(kClasses - kLeaky));
            index.add(cls, unit);
            model.add(cls, unit);
            if (unit < now) {
                last_late = {cls, unit};
                any_late = true;
            }
            if (!any_add || unit >= open_end) open_end = unit / kBase * kBase + kBase;
            any_add = true;
            ++stats.adds;
        } else if (what < 985) {
            // Free a live allocation: half the time a young one (the back of
            // the vector), otherwise any.
            const std::size_t n = model.size();
            const std::size_t i = rng.below(2) == 0 ? n - 1 - rng.below(std::min<std::size_t>(n, 32)) : rng.below(n);
            const Live e = model.entries()[i];
            if (e.cls < class_id(kLeaky) && rng.below(20) != 0) continue;  // leaky: mostly kept
            model.take(i);
            const bool removed = index.remove(e.cls, e.unit);
            ASSERT_TRUE(removed) << "remove(" << e.cls << ", " << e.unit << ") of a live allocation failed at op " << op;
            ++stats.frees;
        } else {
            // A remove that must fail: a class with nothing live near the unit.
            ClassId cls;
            std::uint64_t unit = rng.below(3) == 0 ? rng.below(now + 1000) : (now >= 100 ? now - rng.below(100) : now);
            const std::uint64_t kind = rng.below(4);
            if (kind == 0) {
                cls = static_cast<ClassId>(1 + rng.below(36));  // never used (ids are multiples of 37)
            } else if (kind == 1) {
                cls = static_cast<ClassId>(1'000'000 + rng.below(1000));  // past every id used
            } else if (kind == 2 || !any_late) {
                cls = class_id(rng.below(kClasses));  // used; only checked where none is near
            } else {
                // The class of the latest late record, a little before or
                // after it: a late record's epoch must not reach that far
                // (a base epoch around it, cut to the gap it is in).
                cls = last_late.cls;
                const std::uint64_t d = rng.between(16, 64);
                unit = rng.below(2) == 0 ? (last_late.unit >= d ? last_late.unit - d : 0) : last_late.unit + d;
            }
            const std::uint64_t len = max_epoch_len_ending_after(open_end, unit);
            const std::uint64_t near_lo = unit >= len ? unit - len + 1 : 0;
            if (model.any_in(cls, near_lo, unit + len)) continue;  // might share an epoch with a live one
            const std::uint64_t live_before = index.live();
            const std::size_t epochs_before = index.epoch_count();
            const bool check_answer = rng.below(8) == 0;
            Answer before;
            if (check_answer) before = born_before(index, kAll);
            const bool removed = index.remove(cls, unit);
            EXPECT_FALSE(removed) << "remove(" << cls << ", " << unit << ") succeeded with no such allocation live, op "
                                  << op;
            ASSERT_EQ(index.live(), live_before);
            ASSERT_EQ(index.epoch_count(), epochs_before);
            if (check_answer) {
                ASSERT_EQ(born_before(index, kAll), before) << "a failed remove changed the index";
            }
            ++stats.bogus_removes;
        }

        stats.final_now = now;
        ASSERT_EQ(index.live(), model.size()) << "op " << op;
        stats.max_epochs = std::max(stats.max_epochs, index.epoch_count());
        stats.max_live = std::max(stats.max_live, model.size());
        ASSERT_LT(index.epoch_count(), 2000u) << "op " << op << ", now " << now;

        if (op % 400 == 399) {
            ++stats.checks;
            std::vector<std::uint64_t> boundaries = {0, 1, kAll, open_end, open_end + 1, open_end + 1000, now + 1};
            if (open_end > 0) boundaries.push_back(open_end - 1);
            for (const std::uint64_t k : {0ULL, 1ULL, 2ULL, 15ULL, 16ULL, 17ULL, 31ULL, 32ULL, 33ULL, 100ULL, 255ULL,
                                          256ULL, 257ULL, 1000ULL, 4096ULL, 10'000ULL, 65'536ULL, 100'000ULL,
                                          1'000'000ULL, 10'000'000ULL, 50'000'000ULL})
                if (now >= k) boundaries.push_back(now - k);
            for (int j = 0; j < 4; ++j) boundaries.push_back(rng.below(now + 1));
            // Units where the model has allocations, and just past them.
            for (int j = 0; j < 4 && model.size() > 0; ++j) {
                const std::uint64_t u = model.entries()[rng.below(model.size())].unit;
                boundaries.push_back(u);
                boundaries.push_back(u + 1);
            }
            std::sort(boundaries.begin(), boundaries.end());
            boundaries.erase(std::unique(boundaries.begin(), boundaries.end()), boundaries.end());
            std::map<ClassId, std::uint64_t> previous;
            for (const std::uint64_t units : boundaries) {
                check_query(index, model, open_end, units, &previous);
                if (testing::Test::HasFatalFailure()) return;
            }
            if (testing::Test::HasFailure()) {
                ADD_FAILURE() << "stopping the stream at op " << op << ", now " << now;
                return;
            }
        }
    }
    // Free everything left: each is found, and the index ends empty.
    while (model.size() > 0) {
        const Live e = model.take(model.size() - 1);
        EXPECT_TRUE(index.remove(e.cls, e.unit)) << "remove(" << e.cls << ", " << e.unit << ") at the end";
    }
    EXPECT_EQ(index.live(), 0u);
    EXPECT_TRUE(born_before(index, kAll).empty());
}

class AgeIndexStream : public testing::TestWithParam<std::uint64_t> {};

TEST_P(AgeIndexStream, MatchesAModelOfLiveAllocationsWithinTheDocumentedSlack) {
    StreamStats s;
    run_stream(GetParam(), 150'000, &s);
    ASSERT_FALSE(HasFatalFailure());
    RecordProperty("max_epochs", static_cast<int>(s.max_epochs));
    std::cout << "[stream] seed " << GetParam() << ": adds " << s.adds << " (late " << s.late_adds << "), frees "
              << s.frees << ", failing removes " << s.bogus_removes << ", checks " << s.checks << ", max live "
              << s.max_live << ", max epochs " << s.max_epochs << ", units spanned " << s.final_now << "\n";
    // The stream must really have exercised what it is meant to.
    EXPECT_GT(s.late_adds, 500u);
    EXPECT_GT(s.bogus_removes, 500u);
    EXPECT_GT(s.final_now, 50'000'000u);
    EXPECT_LT(s.max_epochs, 2000u);
}

INSTANTIATE_TEST_SUITE_P(AgeIndex, AgeIndexStream, testing::Values(1, 0x5eed, 0xdeadbeef, 42));

}  // namespace
}  // namespace kleak::core
