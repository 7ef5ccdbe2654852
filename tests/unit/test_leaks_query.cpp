// The `leaks` query: from the per-site aggregates without min_age, from a scan
// of the live allocations with it, at the tracker's 2^20 ns age resolution.
#include <gtest/gtest.h>

#include "core/leaks_query.h"
#include "test_helpers.h"

namespace kleak::core {
namespace {

using test::alloc_event;
using test::free_event;

constexpr std::uint64_t kUnit = std::uint64_t{1} << 20;  // ns
constexpr std::uint64_t kSecond = 1'000'000'000;
constexpr std::uint64_t kSiteA = 0xffffffff81a00010;
constexpr std::uint64_t kSiteB = 0xffffffff81b00020;
constexpr std::uint64_t kFree = 0xffffffff81f00030;
constexpr std::uint64_t kPtr = 0xffff888000010000;

// Site A: 3 x 64 bytes born at 10 s, 20 s, 30 s; one more at 30 s freed.
// Site B: 1 x 4096 bytes born at 25 s.
Tracker example(bool indexed = false) {
    Tracker t;
    if (indexed) t.index_ages();
    t.apply(alloc_event({.ts = 10 * kSecond, .ptr = kPtr, .site = kSiteA, .req = 60, .alloc = 64}));
    t.apply(alloc_event({.ts = 20 * kSecond, .ptr = kPtr + 64, .site = kSiteA, .req = 60, .alloc = 64}));
    t.apply(alloc_event({.ts = 25 * kSecond, .ptr = kPtr + 4096, .site = kSiteB, .req = 4000, .alloc = 4096}));
    t.apply(alloc_event({.ts = 30 * kSecond, .ptr = kPtr + 128, .site = kSiteA, .req = 60, .alloc = 64}));
    t.apply(alloc_event({.ts = 30 * kSecond, .ptr = kPtr + 192, .site = kSiteA, .req = 60, .alloc = 64}));
    t.apply(free_event({.ts = 31 * kSecond, .ptr = kPtr + 192, .site = kFree}));
    return t;
}

LeaksResult run(const Tracker& tracker, LeaksQuery query) {
    FixedSymbolizer symbols({{kSiteA, {"alloc_a", kSiteA, ""}}, {kSiteB, {"alloc_b", kSiteB, ""}}});
    return query_leaks(tracker, query, symbols);
}

TEST(LeaksQuery, WithoutMinAgeReadsTheAggregates) {
    const LeaksResult r = run(example(), {.top = 10, .now_ns = 40 * kSecond});
    EXPECT_EQ(r.outstanding, 4u);
    EXPECT_EQ(r.outstanding_bytes, 3 * 64 + 4096u);
    ASSERT_EQ(r.rows.size(), 2u);
    EXPECT_EQ(r.rows[0].function, "alloc_b");  // by bytes
    EXPECT_EQ(r.rows[1].function, "alloc_a");
    EXPECT_EQ(r.rows[1].outstanding, 3u);
    EXPECT_EQ(r.rows[1].frees, 1u);
    EXPECT_FALSE(r.rows[1].oldest_age_ns.has_value());
}

TEST(LeaksQuery, WithAnAgeIndexMinAgeAddsUpEpochs) {
    // The same question as below, from the daemon's kind of tracker: the
    // threshold (28 s) falls in no epoch here (each allocation opened one of
    // 16 units, and they are seconds apart), so the counts are the scan's;
    // the oldest is its epoch's last unit: at most 16 units younger.
    const LeaksQuery query{.top = 10, .min_age_ns = 12 * kSecond, .now_ns = 40 * kSecond, .sort = LeakSort::count};
    const Tracker indexed = example(true);
    ASSERT_TRUE(indexed.ages_indexed());
    const LeaksResult got = run(indexed, query);
    const LeaksResult scanned = run(example(), query);
    EXPECT_EQ(got.outstanding, 3u);
    EXPECT_EQ(got.outstanding_bytes, scanned.outstanding_bytes);
    ASSERT_EQ(got.rows.size(), 2u);
    for (std::size_t i = 0; i < 2; ++i) {
        EXPECT_EQ(got.rows[i].function, scanned.rows[i].function);
        EXPECT_EQ(got.rows[i].outstanding, scanned.rows[i].outstanding);
        ASSERT_TRUE(got.rows[i].oldest_age_ns.has_value());
        EXPECT_LE(*got.rows[i].oldest_age_ns, *scanned.rows[i].oldest_age_ns);
        EXPECT_GE(*got.rows[i].oldest_age_ns + AgeIndex::kBaseUnits * kUnit, *scanned.rows[i].oldest_age_ns);
    }
    // A threshold inside 25 s's epoch leaves B's allocation out, never younger ones in.
    const LeaksResult inside = run(indexed, {.top = 10, .min_age_ns = 15 * kSecond - 5 * kUnit, .now_ns = 40 * kSecond});
    EXPECT_EQ(inside.outstanding, 2u);
    const LeaksResult scanned_inside = run(example(), {.top = 10, .min_age_ns = 15 * kSecond - 5 * kUnit, .now_ns = 40 * kSecond});
    EXPECT_EQ(scanned_inside.outstanding, 3u);
}

TEST(LeaksQuery, MinAgeCountsOnlyOldEnoughAllocations) {
    // now 40 s, min_age 12 s: born by 28 s: A's 10 s and 20 s, B's 25 s.
    const LeaksResult r = run(example(), {.top = 10, .min_age_ns = 12 * kSecond, .now_ns = 40 * kSecond,
                                          .sort = LeakSort::count});
    EXPECT_EQ(r.outstanding, 3u);
    EXPECT_EQ(r.outstanding_bytes, 2 * 64 + 4096u);
    ASSERT_EQ(r.rows.size(), 2u);
    EXPECT_EQ(r.rows[0].function, "alloc_a");  // by count
    EXPECT_EQ(r.rows[0].outstanding, 2u);
    EXPECT_EQ(r.rows[0].outstanding_bytes, 128u);
    EXPECT_EQ(r.rows[0].allocs, 4u);  // the site's own totals, unfiltered
    // The oldest age is the true age rounded down to the unit: 30 s, less
    // under 1.05 ms.
    ASSERT_TRUE(r.rows[0].oldest_age_ns.has_value());
    EXPECT_EQ(*r.rows[0].oldest_age_ns, 40 * kSecond - rounded_birth_ns(10 * kSecond));
    EXPECT_LE(*r.rows[0].oldest_age_ns, 30 * kSecond);
    EXPECT_GT(*r.rows[0].oldest_age_ns, 30 * kSecond - kUnit);
    EXPECT_EQ(r.rows[1].function, "alloc_b");
    EXPECT_EQ(r.rows[1].outstanding, 1u);
}

TEST(LeaksQuery, MinAgeNeverCountsAnAllocationYoungerThanAsked) {
    // Site B's allocation was made at 25 s. Asked at now = 25 s + min_age
    // exactly, it is exactly old enough, but only its 2^20 ns unit is kept:
    // it counts once the whole unit is min_age old, and never before.
    const Tracker tracker = example();
    const std::uint64_t born = 25 * kSecond;
    const std::uint64_t min_age = 5 * kSecond;
    const auto b_count = [&](std::uint64_t now) {
        const LeaksResult r = run(tracker, {.top = 10, .min_age_ns = min_age, .now_ns = now});
        for (const LeakRow& row : r.rows)
            if (row.function == "alloc_b") return row.outstanding;
        return std::uint64_t{0};
    };
    EXPECT_EQ(b_count(born + min_age - 1), 0u);                        // younger: never
    EXPECT_EQ(b_count(rounded_birth_ns(born) + min_age - 1), 0u);      // maybe younger: not yet
    EXPECT_EQ(b_count(rounded_birth_ns(born) + min_age), 1u);          // surely old enough
    EXPECT_LT(rounded_birth_ns(born) - born, kUnit);                   // ... at most 1.05 ms late
}

TEST(LeaksQuery, MinAgeLongerThanUptimeFindsNothing) {
    const LeaksResult r = run(example(), {.top = 10, .min_age_ns = 100 * kSecond, .now_ns = 40 * kSecond});
    EXPECT_EQ(r.outstanding, 0u);
    EXPECT_TRUE(r.rows.empty());
}

TEST(LeaksQuery, JsonCarriesOldestAgeOnlyWhenScanned) {
    const Tracker tracker = example();
    const LeaksQuery aged{.top = 1, .min_age_ns = kSecond, .now_ns = 40 * kSecond};
    const nlohmann::json with_age = leaks_to_json(run(tracker, aged), aged);
    ASSERT_EQ(with_age["sites"].size(), 1u);
    EXPECT_EQ(with_age["sites"][0]["oldest_age_ns"], 40 * kSecond - rounded_birth_ns(25 * kSecond));
    const LeaksQuery plain{.top = 1, .now_ns = 40 * kSecond};
    EXPECT_FALSE(leaks_to_json(run(tracker, plain), plain)["sites"][0].contains("oldest_age_ns"));
}

}  // namespace
}  // namespace kleak::core
