// Site histories, the Theil-Sen trend and the verdicts judged from them, on
// synthetic histories: step, plateau, slow and fast leaks, noise, a burst,
// churn at a constant population, missed frees, reset.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "core/leaks_query.h"
#include "core/site_history.h"
#include "core/site_verdicts.h"
#include "core/suspects_query.h"
#include "core/trend.h"
#include "core/verdict.h"

namespace {

using namespace kleak::core;

constexpr std::uint64_t kSecond = 1'000'000'000;
constexpr std::uint64_t kPeriod = 10 * kSecond;

// A tier-0 history sampled every 10 s for `seconds`, outstanding = f(t in s).
std::vector<HistoryPoint> series(std::uint64_t seconds, const std::function<double(double)>& f) {
    std::vector<HistoryPoint> points;
    for (std::uint64_t t = 0; t <= seconds; t += kPeriod / kSecond) {
        const auto n = static_cast<std::uint64_t>(std::llround(std::max(0.0, f(static_cast<double>(t)))));
        points.push_back({1000 * kSecond + t * kSecond, n, n * 64});
    }
    return points;
}

SiteStats stats_with(std::uint64_t allocs, std::uint64_t replaced = 0) {
    SiteStats s;
    s.allocs = allocs;
    s.replaced = replaced;
    return s;
}

SiteJudgement judge(const std::vector<HistoryPoint>& h, SiteStats stats = stats_with(100000)) {
    return judge_site(h, stats, VerdictRules{});
}

// --- trend -----------------------------------------------------------------------

TEST(Trend, TheilSenIgnoresAMinorityOfOutliers) {
    std::vector<TrendPoint> points;
    for (int i = 0; i < 20; ++i) points.push_back({static_cast<double>(i), 2.0 * i + 5});
    points[3].y = 1000;  // bursts
    points[11].y = -500;
    points[17].y = 4000;
    EXPECT_NEAR(theil_sen_slope(points), 2.0, 0.15);
}

TEST(Trend, DegenerateInputsGiveZero) {
    EXPECT_EQ(theil_sen_slope({}), 0);
    const std::vector<TrendPoint> one{{1, 5}};
    EXPECT_EQ(theil_sen_slope(one), 0);
    const std::vector<TrendPoint> same_time{{1, 5}, {1, 9}};
    EXPECT_EQ(theil_sen_slope(same_time), 0);
}

TEST(Trend, SpreadingKeepsTheSlopeOfALongLine) {
    std::vector<TrendPoint> points;
    for (int i = 0; i < 500; ++i) points.push_back({static_cast<double>(i), -0.5 * i});
    EXPECT_DOUBLE_EQ(theil_sen_slope(points, 16), -0.5);
}

TEST(Trend, RisingShareIgnoresTies) {
    const std::vector<TrendPoint> steps{{0, 1}, {1, 1}, {2, 2}, {3, 2}, {4, 3}};
    EXPECT_DOUBLE_EQ(rising_share(steps), 1.0);
    const std::vector<TrendPoint> flat{{0, 7}, {1, 7}, {2, 7}};
    EXPECT_DOUBLE_EQ(rising_share(flat), 1.0);
    const std::vector<TrendPoint> down_up{{0, 2}, {1, 1}, {2, 2}};
    EXPECT_NEAR(rising_share(down_up), 0.5, 1e-9);  // 2>1: no; 1<2: yes; 2=2: tie
}

// --- verdicts ----------------------------------------------------------------------

TEST(Verdict, ASteadyLeakIsGrowingWithItsRate) {
    const SiteJudgement j = judge(series(600, [](double t) { return 200 + t; }));  // 1 per second
    EXPECT_EQ(j.verdict, Verdict::growing) << j.reason;
    EXPECT_NEAR(j.growth_per_hour, 3600, 1);
    EXPECT_NEAR(j.growth_bytes_per_hour, 3600 * 64, 64);
    EXPECT_NE(j.reason.find("growing: trend +3600/h over 10m"), std::string::npos) << j.reason;
}

TEST(Verdict, ALeakIsJudgedGrowingOnceItHasAMinuteOfHistory) {
    EXPECT_EQ(judge(series(50, [](double t) { return t; })).verdict, Verdict::young);
    EXPECT_EQ(judge(series(60, [](double t) { return t; })).verdict, Verdict::growing);
    EXPECT_EQ(judge(series(90, [](double t) { return t; })).verdict, Verdict::growing);
}

TEST(Verdict, AHistoryAHairShortOfAMinuteIsJudged) {
    auto h = series(60, [](double t) { return t; });
    h.back().t_ns -= 10'000'000;  // the timer fired 10 ms early
    EXPECT_EQ(judge(h).verdict, Verdict::growing);
    h.back().t_ns -= 5 * kSecond;  // 55 s: young
    EXPECT_EQ(judge(h).verdict, Verdict::young);
}

TEST(Verdict, YoungSaysHowMuchHistoryItHas) {
    const SiteJudgement j = judge(series(30, [](double) { return 5; }));
    EXPECT_EQ(j.verdict, Verdict::young);
    EXPECT_EQ(j.reason, "only 30s of history; judged after 1m");
    EXPECT_EQ(judge({}).verdict, Verdict::young);
}

TEST(Verdict, APlateauStopsGrowingAfterTheRecentWindow) {
    // 5,000 filled over 100 s, then held: growing while it fills, steady
    // once flat for `recent` (60 s).
    auto plateau = [](double t) { return std::min(t, 100.0) * 50; };
    EXPECT_EQ(judge(series(110, plateau)).verdict, Verdict::growing);
    EXPECT_EQ(judge(series(150, plateau)).verdict, Verdict::growing);
    const SiteJudgement flat_for_60 = judge(series(160, plateau));
    EXPECT_EQ(flat_for_60.verdict, Verdict::steady) << flat_for_60.reason;
    EXPECT_NE(flat_for_60.reason.find("stopped growing: no new high in the last 1m"), std::string::npos)
        << flat_for_60.reason;
    EXPECT_EQ(judge(series(900, plateau)).verdict, Verdict::steady);
}

TEST(Verdict, AStepIsSteadyOnceFlat) {
    auto step = [](double t) { return t < 300 ? 100.0 : 5000.0; };
    EXPECT_EQ(judge(series(400, step)).verdict, Verdict::steady);
}

TEST(Verdict, AStepIsNotGrowingEvenWhileItIsTheNewestHigh) {
    // 100 for 50 s, then 5,000: 50 s later the trend rises and it is the
    // newest high, but one interval made the whole rise (a burst held, a BPF
    // map).
    auto step = [](double t) { return t < 50 ? 100.0 : 5000.0; };
    const SiteJudgement j = judge(series(100, step));
    EXPECT_EQ(j.verdict, Verdict::steady) << j.reason;
    EXPECT_NE(j.reason.find("a step, not a climb: 4900 of its rise of 4900 came between two samples and stayed"),
              std::string::npos)
        << j.reason;
    // Steps one after another (a leak in bursts) are a climb.
    const SiteJudgement bursts = judge(series(100, [](double t) { return 100 + 500 * std::floor(t / 20); }));
    EXPECT_EQ(bursts.verdict, Verdict::growing) << bursts.reason;
    // A burst that straddles a sample is one step.
    const SiteJudgement straddled =
        judge(series(100, [](double t) { return t < 50 ? 100.0 : t < 60 ? 2600.0 : 5000.0; }));
    EXPECT_EQ(straddled.verdict, Verdict::steady) << straddled.reason;
    EXPECT_NE(straddled.reason.find("a step, not a climb: 4900 of its rise"), std::string::npos) << straddled.reason;
    // Two bursts are a climb too, though most sample pairs straddle only one.
    const SiteJudgement two_bursts =
        judge(series(100, [](double t) { return 100.0 + (t >= 20 ? 500 : 0) + (t >= 80 ? 500 : 0); }));
    EXPECT_EQ(two_bursts.verdict, Verdict::growing) << two_bursts.reason;
    // A step does not hide a leak beside it: 1 a second, and 300 more held from 50 s.
    const SiteJudgement leak_and_step = judge(series(100, [](double t) { return 100 + t + (t < 50 ? 0 : 300); }));
    EXPECT_EQ(leak_and_step.verdict, Verdict::growing) << leak_and_step.reason;
    // Nor does a spike that came back down: 1 a second, 200 more at one sample only.
    const SiteJudgement leak_and_spike = judge(series(100, [](double t) { return 100 + t + (t == 50 ? 200 : 0); }));
    EXPECT_EQ(leak_and_spike.verdict, Verdict::growing) << leak_and_spike.reason;
}

TEST(Verdict, ChurnAtAConstantPopulationIsNeverGrowing) {
    std::mt19937 rng(7);
    for (int run = 0; run < 50; ++run) {
        std::normal_distribution<double> noise(0, 40);
        const auto h = series(900, [&](double) { return 5000 + noise(rng); });
        const SiteJudgement j = judge(h);
        EXPECT_NE(j.verdict, Verdict::growing) << "run " << run << ": " << j.reason;
    }
}

TEST(Verdict, ABurstDoesNotMakeALeak) {
    // Flat at 300, one sample at 9,000 in the middle.
    auto burst = [](double t) { return t == 450 ? 9000.0 : 300.0; };
    const SiteJudgement j = judge(series(900, burst));
    EXPECT_EQ(j.verdict, Verdict::steady) << j.reason;
    EXPECT_EQ(j.growth_per_hour, 0);
}

TEST(Verdict, ALeakUnderNoiseIsStillGrowing) {
    std::mt19937 rng(11);
    std::normal_distribution<double> noise(0, 3);
    const SiteJudgement j = judge(series(900, [&](double t) { return 1000 + t + noise(rng); }));
    EXPECT_EQ(j.verdict, Verdict::growing) << j.reason;
    EXPECT_NEAR(j.growth_per_hour, 3600, 200);
}

TEST(Verdict, ASlowLeakOfOneAMinuteIsGrowing) {
    const SiteJudgement j = judge(series(900, [](double t) { return 40 + std::floor(t / 60); }));
    EXPECT_EQ(j.verdict, Verdict::growing) << j.reason;
    EXPECT_NEAR(j.growth_per_hour, 60, 8);
}

TEST(Verdict, TooSmallARiseIsSteady) {
    const SiteJudgement j = judge(series(900, [](double t) { return t < 600 ? 10.0 : 12.0; }));
    EXPECT_EQ(j.verdict, Verdict::steady) << j.reason;
}

TEST(Verdict, FlatSaysFlat) {
    const SiteJudgement j = judge(series(300, [](double) { return 17; }));
    EXPECT_EQ(j.verdict, Verdict::steady);
    EXPECT_EQ(j.reason, "flat: trend +0.0/h over 5m");
}

TEST(Verdict, MissedFreesAreUntrackedAndNeverGrowing) {
    const auto leak_shape = series(600, [](double t) { return t; });
    const SiteJudgement j = judge(leak_shape, stats_with(10000, 2000));
    EXPECT_EQ(j.verdict, Verdict::untracked_frees);
    EXPECT_NE(j.reason.find("2000 of its 10000 allocations had their address allocated again"), std::string::npos);
    // Below both floors (8 and 1 %), a few replaced ones do not decide.
    EXPECT_EQ(judge(leak_shape, stats_with(10000, 7)).verdict, Verdict::growing);
    EXPECT_EQ(judge(leak_shape, stats_with(100000, 999)).verdict, Verdict::growing);
    EXPECT_EQ(judge(leak_shape, stats_with(100000, 1000)).verdict, Verdict::untracked_frees);
}

TEST(Verdict, OnlyTheWindowCounts) {
    // A climb that ended 20 minutes ago, flat since: the 15-minute window
    // sees only the flat part.
    auto old_climb = [](double t) { return std::min(t, 300.0); };
    const SiteJudgement j = judge(series(1500, old_climb));
    EXPECT_EQ(j.verdict, Verdict::steady);
    EXPECT_EQ(j.history_ns, 15 * 60 * kSecond);
    EXPECT_EQ(j.reason, "flat: trend +0.0/h over 15m");
}

TEST(Verdict, AGrowingReclaimableCacheIsReclaimableNotALeak) {
    SiteStats cache = stats_with(100000);
    cache.reclaimable = true;
    const auto climb = series(600, [](double t) { return 200 + t; });
    const SiteJudgement j = judge_site(climb, cache, VerdictRules{});
    EXPECT_EQ(j.verdict, Verdict::reclaimable);
    EXPECT_NE(j.reason.find("growing, but in reclaimable memory"), std::string::npos) << j.reason;
    EXPECT_NEAR(j.growth_per_hour, 3600, 1);
    // Flat, it is steady like any other site.
    EXPECT_EQ(judge_site(series(600, [](double) { return 50; }), cache, VerdictRules{}).verdict, Verdict::steady);
}

TEST(Verdict, NamesRoundTrip) {
    for (Verdict v : {Verdict::young, Verdict::steady, Verdict::growing, Verdict::untracked_frees, Verdict::reclaimable})
        EXPECT_EQ(verdict_from_name(verdict_name(v)), v);
    EXPECT_EQ(verdict_name(Verdict::untracked_frees), "untracked-frees");
    EXPECT_FALSE(verdict_from_name("leaking"));
}

// --- histories ---------------------------------------------------------------------

std::vector<SiteStats> sites_with(std::vector<std::uint64_t> outstanding) {
    std::vector<SiteStats> sites;
    for (std::uint64_t n : outstanding) {
        SiteStats s;
        s.allocs = n + 1;
        s.outstanding = n;
        s.outstanding_bytes = n * 32;
        sites.push_back(s);
    }
    return sites;
}

TEST(SiteHistories, TierZeroKeepsTheNewestNinetyOneSamples) {
    SiteHistories h(kPeriod);
    for (std::uint64_t i = 0; i < 200; ++i) h.sample(sites_with({i}), 5 * kSecond + i * kPeriod);
    const auto tier0 = h.series(0, 0);
    ASSERT_EQ(tier0.size(), 91u);  // 90 intervals: the default 15 min window, whole
    EXPECT_EQ(tier0.front(), (HistoryPoint{5 * kSecond + 109 * kPeriod, 109, 109 * 32}));
    EXPECT_EQ(tier0.back(), (HistoryPoint{5 * kSecond + 199 * kPeriod, 199, 199 * 32}));
    EXPECT_EQ(h.samples(), 200u);
}

TEST(SiteHistories, CoarserTiersTakeOneSampleAPeriod) {
    SiteHistories h(kPeriod);
    // 3 hours at 10 s, with 1 s of jitter either way.
    for (std::uint64_t i = 0; i <= 1080; ++i)
        h.sample(sites_with({i}), i * kPeriod + (i % 3) * kSecond - (i % 2) * kSecond + 10 * kSecond);
    const auto minutes = h.series(0, 1);
    ASSERT_EQ(minutes.size(), 120u);  // 181 minute samples, the newest 120 kept
    for (std::size_t k = 1; k < minutes.size(); ++k) {
        EXPECT_GE(minutes[k].t_ns - minutes[k - 1].t_ns, 55 * kSecond);
        EXPECT_LE(minutes[k].t_ns - minutes[k - 1].t_ns, 65 * kSecond);
    }
    const auto ten_minutes = h.series(0, 2);
    EXPECT_EQ(ten_minutes.size(), 19u);  // 0, 10, ..., 180 min
    EXPECT_EQ(h.series(0, 3).size(), 2u);  // 0 and 2 h
}

TEST(SiteHistories, NewSitesStartLateAndFreeOnlySitesKeepNothing) {
    SiteHistories h(kPeriod);
    h.sample(sites_with({1}), kPeriod);
    auto sites = sites_with({2, 5});
    SiteStats free_only;  // no allocations: a site that only frees
    sites.push_back(free_only);
    h.sample(sites, 2 * kPeriod);
    EXPECT_EQ(h.series(0).size(), 2u);
    EXPECT_EQ(h.series(1).size(), 1u);
    EXPECT_TRUE(h.series(2).empty());
    EXPECT_TRUE(h.series(99).empty());
    EXPECT_GT(h.memory_bytes(), 0u);
    h.clear();
    EXPECT_TRUE(h.series(0).empty());
    EXPECT_EQ(h.samples(), 0u);
}

TEST(SiteHistories, CountsSaturateAndTimesSurviveThirtyDays) {
    HistoryRing ring(4);
    ring.push({100 * kSecond, 5'000'000'000ull, 1ull << 40});
    ring.push({100 * kSecond + 30ull * 86400 * kSecond, 7, 8});
    EXPECT_EQ(ring.at(0).outstanding, 0xffffffffu);
    EXPECT_EQ(ring.at(0).bytes, 1ull << 40);
    EXPECT_EQ(ring.at(0).t_ns, 100 * kSecond);
    EXPECT_EQ(ring.at(1).t_ns, 100 * kSecond + 30ull * 86400 * kSecond);
}

TEST(SiteHistories, TimesStayRightLongAfterTwoToTheThirtyTwoMilliseconds) {
    // A daemon up for 200 days (and a clock that started at 3 years of
    // uptime): the rings keep only recent points, each exact.
    SiteHistories h(600 * kSecond);  // the longest interval: 10 minutes
    const std::uint64_t start = 3ull * 365 * 86400 * kSecond;
    for (std::uint64_t i = 0; i < 200ull * 144; ++i) h.sample(sites_with({i}), start + i * 600 * kSecond);
    const std::uint64_t last = start + (200ull * 144 - 1) * 600 * kSecond;
    const auto tier0 = h.series(0, 0);
    ASSERT_EQ(tier0.size(), 91u);
    EXPECT_EQ(tier0.back().t_ns, last);
    EXPECT_EQ(tier0.front().t_ns, last - 90 * 600 * kSecond);
    for (std::size_t t = 1; t < kHistoryTiers.size(); ++t) {
        const auto series = h.series(0, t);
        ASSERT_EQ(series.size(), kHistoryTiers[t].capacity) << t;
        for (std::size_t k = 1; k < series.size(); ++k)
            ASSERT_EQ(series[k].t_ns - series[k - 1].t_ns, std::max<std::uint64_t>(kHistoryTiers[t].period_ns, 600 * kSecond))
                << "tier " << t << " point " << k;
    }
}

TEST(SiteHistories, AtMostTheStatedBytesASite) {
    SiteHistories h(kPeriod);
    // 31 days at 10 s.
    for (std::uint64_t i = 0; i < 31ull * 8640; ++i) h.sample(sites_with({i % 1000}), i * kPeriod);
    for (std::size_t t = 0; t < kHistoryTiers.size(); ++t) EXPECT_EQ(h.series(0, t).size(), kHistoryTiers[t].capacity);
    EXPECT_LE(h.memory_bytes(), kMaxHistoryPoints * 16 + 256);
}

// --- the daemon's verdicts and the suspects query, on a real tracker ----------------------

constexpr std::uint64_t kLeakSite = 0xffffffff81000100, kCacheSite = 0xffffffff81000200,
                        kFreshSite = 0xffffffff81000300;

// A tracker fed by a tiny kernel: each step of 10 s, the leak site allocates
// one object it never frees, the cache site holds 50 objects (freeing the
// oldest as it allocates), and from `fresh_from` on a third site starts.
struct Scenario {
    Tracker tracker;
    SiteVerdicts verdicts{kPeriod, VerdictRules{}};
    std::uint64_t next_ptr = 0xffff888000000000;
    std::vector<std::uint64_t> cache;

    void allocate(std::uint64_t site, std::uint64_t ts, std::uint64_t ptr) {
        Event e;
        e.kind = EventKind::kmalloc;
        e.ts_ns = ts;
        e.ptr = ptr;
        e.call_site = site;
        e.bytes_req = e.bytes_alloc = 128;
        tracker.apply(e);
    }
    void free(std::uint64_t ptr, std::uint64_t ts) {
        Event e;
        e.kind = EventKind::kfree;
        e.ts_ns = ts;
        e.ptr = ptr;
        e.call_site = 0xffffffff81999999;
        tracker.apply(e);
    }
    void run(int steps, int fresh_from = 1'000'000) {
        for (int k = 0; k < steps; ++k) {
            const std::uint64_t ts = 1000 * kSecond + static_cast<std::uint64_t>(k) * kPeriod;
            allocate(kLeakSite, ts, next_ptr += 64);
            for (int i = 0; i < 5; ++i) {
                cache.push_back(next_ptr += 64);
                allocate(kCacheSite, ts + 1, cache.back());
                if (cache.size() > 50) {
                    free(cache.front(), ts + 2);
                    cache.erase(cache.begin());
                }
            }
            if (k >= fresh_from) allocate(kFreshSite, ts + 3, next_ptr += 64);
            verdicts.sample(tracker.sites(), ts + 5);
        }
    }
};

FixedSymbolizer scenario_symbols() {
    return FixedSymbolizer({{kLeakSite, {"leaky_alloc", 0x10, ""}},
                            {kCacheSite, {"cache_alloc", 0x20, ""}},
                            {kFreshSite, {"fresh_alloc", 0x30, ""}}});
}

TEST(SuspectsQuery, GrowingSitesRankFirstWithReasonsAndAges) {
    Scenario sc;
    sc.run(30, /*fresh_from=*/27);
    FixedSymbolizer symbols = scenario_symbols();
    const std::uint64_t now = 1000 * kSecond + 29 * kPeriod + 5;
    const SuspectsResult r = query_suspects(sc.tracker, sc.verdicts, {20, now}, symbols);
    ASSERT_EQ(r.rows.size(), 3u);
    EXPECT_EQ(r.sites, 3u);
    EXPECT_EQ(r.growing, 1u);
    EXPECT_EQ(r.rows[0].site, "leaky_alloc+0x10");
    EXPECT_EQ(r.rows[0].judgement.verdict, Verdict::growing);
    EXPECT_NEAR(r.rows[0].judgement.growth_per_hour, 360, 1);  // one per 10 s
    EXPECT_EQ(r.rows[0].outstanding, 30u);
    // 30 allocations 10 s apart, the newest 5 ns before now: ages 0..290 s
    // (the tracker rounds birth times up by at most 1.05 ms).
    EXPECT_NEAR(static_cast<double>(r.rows[0].oldest_age_ns) / kSecond, 290, 0.002);
    EXPECT_NEAR(static_cast<double>(r.rows[0].age_p50_ns) / kSecond, 145, 10);
    EXPECT_NEAR(static_cast<double>(r.rows[0].age_p90_ns) / kSecond, 260, 10);
    EXPECT_EQ(r.rows[1].site, "fresh_alloc+0x30");  // young ranks above steady
    EXPECT_EQ(r.rows[1].judgement.verdict, Verdict::young);
    EXPECT_EQ(r.rows[2].site, "cache_alloc+0x20");
    EXPECT_EQ(r.rows[2].judgement.verdict, Verdict::steady);
    EXPECT_EQ(r.rows[2].outstanding, 50u);

    const nlohmann::json j = suspects_to_json(r, sc.verdicts);
    EXPECT_EQ(j.at("growing"), 1);
    EXPECT_EQ(j.at("samples"), 30);
    EXPECT_EQ(j.at("suspects").at(0).at("verdict"), "growing");
    EXPECT_EQ(j.at("suspects").at(0).at("reasons").size(), 1u);
    EXPECT_EQ(j.at("rules").at("interval_ns"), kPeriod);

    EXPECT_EQ(j.at("rest").at("sites"), 0);
    EXPECT_EQ(j.at("rest").at("outstanding"), 0);

    // top cuts the rows, not the counts; the rows cut are summed in `rest`.
    const SuspectsResult one = query_suspects(sc.tracker, sc.verdicts, {1, now}, symbols);
    EXPECT_EQ(one.rows.size(), 1u);
    EXPECT_EQ(one.sites, 3u);
    EXPECT_EQ(one.rest.sites, 2u);
    EXPECT_EQ(one.rest.outstanding, r.rows[1].outstanding + r.rows[2].outstanding);
    EXPECT_EQ(one.rest.outstanding_bytes, r.rows[1].outstanding_bytes + r.rows[2].outstanding_bytes);
    EXPECT_DOUBLE_EQ(one.rest.growth_per_hour,
                     r.rows[1].judgement.growth_per_hour + r.rows[2].judgement.growth_per_hour);
    EXPECT_DOUBLE_EQ(one.rest.growth_bytes_per_hour,
                     r.rows[1].judgement.growth_bytes_per_hour + r.rows[2].judgement.growth_bytes_per_hour);
    const nlohmann::json rest = suspects_to_json(one, sc.verdicts).at("rest");
    EXPECT_EQ(rest.at("sites"), 2);
    EXPECT_EQ(rest.at("outstanding"), one.rest.outstanding);
}

TEST(SuspectsQuery, LeaksRowsCarryTheVerdict) {
    Scenario sc;
    sc.run(30);
    FixedSymbolizer symbols = scenario_symbols();
    LeaksQuery q;
    const LeaksResult with = query_leaks(sc.tracker, q, symbols, &sc.verdicts);
    ASSERT_EQ(with.rows.size(), 2u);
    for (const LeakRow& row : with.rows)
        EXPECT_EQ(row.verdict, row.function == "leaky_alloc" ? Verdict::growing : Verdict::steady) << row.site;
    EXPECT_EQ(leaks_to_json(with, q).at("sites").at(0).at("verdict"), "steady");  // the cache has more bytes
    const LeaksResult without = query_leaks(sc.tracker, q, symbols);
    EXPECT_FALSE(without.rows[0].verdict);
    EXPECT_FALSE(leaks_to_json(without, q).at("sites").at(0).contains("verdict"));
}

TEST(SuspectsQuery, HistoryAndSiteLookup) {
    Scenario sc;
    sc.run(12);
    FixedSymbolizer symbols = scenario_symbols();
    const auto by_name = find_site(sc.tracker, "leaky_alloc+0x10", symbols);
    const auto by_function = find_site(sc.tracker, "leaky_alloc", symbols);
    const auto by_address = find_site(sc.tracker, "0xffffffff81000100", symbols);
    ASSERT_TRUE(by_name);
    EXPECT_EQ(by_function, by_name);
    EXPECT_EQ(by_address, by_name);
    EXPECT_FALSE(find_site(sc.tracker, "nosuch", symbols));
    EXPECT_FALSE(find_site(sc.tracker, "0xffffffff8100010z", symbols));
    // The freeing site has no allocations and no history: not found.
    EXPECT_FALSE(find_site(sc.tracker, "0xffffffff81999999", symbols));

    const nlohmann::json h = history_to_json(sc.tracker, sc.verdicts, *by_name, 0, symbols);
    EXPECT_EQ(h.at("site"), "leaky_alloc+0x10");
    EXPECT_EQ(h.at("interval_ns"), kPeriod);
    ASSERT_EQ(h.at("points").size(), 12u);
    EXPECT_EQ(h.at("points").at(0).at("outstanding"), 1);
    EXPECT_EQ(h.at("points").at(11).at("outstanding"), 12);
    EXPECT_EQ(h.at("verdict"), "growing");
    EXPECT_EQ(history_to_json(sc.tracker, sc.verdicts, *by_name, 1, symbols).at("interval_ns"), 60 * kSecond);
}

TEST(SuspectsQuery, SitesNewerThanTheLastSampleAreYoungWithAReason) {
    Scenario sc;
    sc.run(3);
    const SiteJudgement j = sc.verdicts.judgement(static_cast<SiteId>(sc.tracker.sites().size() + 5));
    EXPECT_EQ(j.verdict, Verdict::young);
    EXPECT_FALSE(j.reason.empty());
}

TEST(SuspectsQuery, GrowthInKleakdsFirstWindowSaysCachesFillUpThen) {
    Scenario sc;
    sc.run(12);
    FixedSymbolizer symbols = scenario_symbols();
    const auto leak = find_site(sc.tracker, "leaky_alloc", symbols);
    ASSERT_TRUE(leak);
    const SiteJudgement j = sc.verdicts.judgement(*leak);
    EXPECT_EQ(j.verdict, Verdict::growing);
    EXPECT_NE(j.reason.find("; kleakd started only 110s ago and caches also fill up from empty then"),
              std::string::npos)
        << j.reason;
    Scenario later;
    later.run(100);  // past the 15-minute window: no such note
    const SiteJudgement settled = later.verdicts.judgement(*find_site(later.tracker, "leaky_alloc", symbols));
    EXPECT_EQ(settled.verdict, Verdict::growing);
    EXPECT_EQ(settled.reason.find("kleakd started"), std::string::npos) << settled.reason;
}

// In kleakd's first window a rise must be steadier: caches refill from empty
// then, following the host's work up and down; a leak climbs.
TEST(SiteVerdicts, AnUnsteadyRiseInKleakdsFirstWindowIsNotJudgedYet) {
    SiteVerdicts verdicts(kPeriod, VerdictRules{});
    std::vector<SiteStats> sites(1);
    sites[0].allocs = 100000;
    // +3 a sample, every third sample -4: 5 of 6 changes rise, a net climb.
    std::uint64_t n = 100;
    for (int k = 0; k < 30; ++k) {
        n = k % 3 == 2 ? n - 4 : n + 3;
        sites[0].outstanding = n;
        verdicts.sample(sites, 1000 * kSecond + static_cast<std::uint64_t>(k) * kPeriod);
    }
    const SiteJudgement j = verdicts.judgement(0);
    EXPECT_EQ(j.verdict, Verdict::young) << j.reason;
    EXPECT_NE(j.reason.find("not judged yet, maybe filling up: kleakd started only 290s ago"), std::string::npos)
        << j.reason;
    EXPECT_GE(j.rising_share, 0.8);
    EXPECT_LT(j.rising_share, 0.9);
    // The same climb once kleakd has run a whole window: growing.
    for (int k = 30; k < 150; ++k) {
        n = k % 3 == 2 ? n - 4 : n + 3;
        sites[0].outstanding = n;
        verdicts.sample(sites, 1000 * kSecond + static_cast<std::uint64_t>(k) * kPeriod);
    }
    EXPECT_EQ(verdicts.judgement(0).verdict, Verdict::growing) << verdicts.judgement(0).reason;
}

TEST(Trend, EvenCountsTakeTheMeanOfTheTwoMiddleSlopes) {
    // Three points: slopes 1 (0->1), 2 (0->2) and 3 (1->2): odd, median 2.
    const std::vector<TrendPoint> three{{0, 0}, {1, 1}, {2, 4}};
    EXPECT_DOUBLE_EQ(theil_sen_slope(three), 2.0);
    // Four points on y = t except the last: slopes 1, 1, 1, 1, 5/... pick
    // a set with an even number of pairs (6) and known middle values.
    const std::vector<TrendPoint> four{{0, 0}, {1, 1}, {2, 2}, {3, 9}};
    // Slopes: 1, 1, 3, 1, 4, 7 -> sorted 1 1 1 3 4 7 -> middle (1 + 3) / 2.
    EXPECT_DOUBLE_EQ(theil_sen_slope(four), 2.0);
}

TEST(SuspectsQuery, ClearForgetsHistoriesAndJudgements) {
    Scenario sc;
    sc.run(12);
    EXPECT_EQ(sc.verdicts.growing(), 2u);  // the cache filled until 20 s ago: still within `recent`
    sc.verdicts.clear();
    EXPECT_EQ(sc.verdicts.growing(), 0u);
    EXPECT_EQ(sc.verdicts.judgement(0).verdict, Verdict::young);
    EXPECT_EQ(sc.verdicts.histories().samples(), 0u);
    EXPECT_TRUE(sc.verdicts.histories().series(0).empty());
}

}  // namespace
