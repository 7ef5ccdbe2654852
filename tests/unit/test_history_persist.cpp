// Site histories across a daemon restart: the snapshot's "history" section
// written and read back, what it refuses, a restored history adopted by its
// site when the new tracker first sees it, and verdicts that judge only the
// points the new daemon sampled (its counts start from zero).
#include <gtest/gtest.h>

#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "core/history_section.h"
#include "core/site_history.h"
#include "core/site_verdicts.h"
#include "core/snapshot.h"
#include "core/suspects_query.h"
#include "core/verdict.h"
#include "test_helpers.h"

namespace {

using namespace kleak::core;
using nlohmann::json;

constexpr std::uint64_t kSecond = 1'000'000'000;
constexpr std::uint64_t kPeriod = 10 * kSecond;
constexpr std::uint64_t kLeak = 0xffffffff81000100, kCache = 0xffffffff81000200, kLate = 0xffffffff81000300;
const HistoryOrigin kHere{"6c1f0e6e-2b7a-4c55-9a4e-0d3b1f2a9c11", "6.18.0-test", kPeriod};

SiteStats site(std::uint64_t address, std::uint64_t outstanding) {
    SiteStats s;
    s.call_site = address;
    s.allocs = outstanding + 1;
    s.outstanding = outstanding;
    s.outstanding_bytes = outstanding * 64;
    return s;
}

// An earlier daemon: `samples` samples 10 s apart from t0 (whole ms, as
// snapshots keep them): the leak gains one each, the cache holds 50.
SiteVerdicts earlier_daemon(std::uint64_t t0, std::uint64_t samples) {
    SiteVerdicts v(kPeriod, VerdictRules{});
    for (std::uint64_t k = 0; k < samples; ++k)
        v.sample(std::vector{site(kLeak, k + 1), site(kCache, 50)}, t0 + k * kPeriod);
    return v;
}

std::string section_text(const SiteVerdicts& v, std::vector<SiteStats> sites = {site(kLeak, 0), site(kCache, 0)}) {
    return history_section_text(v, sites, kHere);
}

json saved_section(const SiteVerdicts& v, std::vector<SiteStats> sites = {site(kLeak, 0), site(kCache, 0)}) {
    return json::parse(section_text(v, std::move(sites)));
}

SavedHistories parsed(const json& section) {
    ParsedHistorySection p = parse_history_section(section);
    EXPECT_TRUE(p.histories) << p.error;
    return p.histories ? std::move(*p.histories) : SavedHistories{};
}

std::string refusal(const json& section) {
    const ParsedHistorySection p = parse_history_section(section);
    EXPECT_FALSE(p.histories);
    return p.error;
}

// --- the section ---------------------------------------------------------------------

TEST(HistorySection, RoundTripKeepsEveryResolutionOfEverySite) {
    // Three hours: every tier holds points.
    const SiteVerdicts before = earlier_daemon(1000 * kSecond, 1081);
    const json section = saved_section(before);
    EXPECT_EQ(section.at("version"), 1);
    EXPECT_EQ(section.at("boot_id"), kHere.boot_id);
    EXPECT_EQ(section.at("interval_ns"), kPeriod);
    ASSERT_EQ(section.at("sites").size(), 2u);
    EXPECT_EQ(section.at("sites").at(0).at("site_address"), "0xffffffff81000100");
    // [t_ms, outstanding, bytes], oldest first.
    EXPECT_EQ(section.at("sites").at(0).at("tiers").at(0).at(90), json({1000000 + 1080 * 10000, 1081, 1081 * 64}));

    const SavedHistories back = parsed(section);
    EXPECT_EQ(back.origin.boot_id, kHere.boot_id);
    EXPECT_EQ(back.origin.kernel_release, kHere.kernel_release);
    EXPECT_EQ(back.origin.interval_ns, kPeriod);
    ASSERT_EQ(back.sites.size(), 2u);
    for (const auto& [address, id] : {std::pair{kLeak, 0u}, std::pair{kCache, 1u}}) {
        const HistoryTiers& tiers = back.sites.at(address);
        for (std::size_t t = 0; t < kHistoryTiers.size(); ++t) {
            EXPECT_FALSE(tiers[t].empty()) << t;
            EXPECT_EQ(tiers[t], before.histories().series(id, t)) << "site " << id << " tier " << t;
        }
    }
    // The text a snapshot holds: one line a site.
    const std::string text = section_text(before);
    EXPECT_EQ(text.rfind("{\n    \"version\": 1,\n    \"boot_id\": \"6c1f0e6e-", 0), 0u) << text.substr(0, 400);
    EXPECT_NE(
        text.find("\n      {\"site_address\": \"0xffffffff81000100\", \"tiers\": [[[10900000,991,63424],[10910000,"),
        std::string::npos)
        << text.substr(0, 400);
    EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 9);  // 5 keys, 2 sites, the ends
}

TEST(HistorySection, StatedSizeOfASiteAfterFifteenMinutes) {
    // 91 samples at 10 s near 12 days of uptime (10-digit ms), a site with
    // a thousand-odd allocations outstanding: about 2.7 KB, as
    // history_section.h says (25 bytes a point).
    SiteVerdicts v(kPeriod, VerdictRules{});
    for (std::uint64_t k = 0; k < 91; ++k)
        v.sample(std::vector{site(kLeak, 1000 + k)}, 1'000'000 * kSecond + k * kPeriod);
    const std::string text = section_text(v, {site(kLeak, 0)});
    const auto line = text.find("{\"site_address\"");
    const std::size_t bytes = text.find('\n', line) - line;
    const json section = json::parse(text);  // a local: the loop must not run over a temporary's member
    std::size_t points = 0;
    for (const auto& tier : section.at("sites").at(0).at("tiers")) points += tier.size();
    EXPECT_EQ(points, 91u + 16 + 2 + 1);
    EXPECT_NEAR(static_cast<double>(bytes), 2700, 150);
}

TEST(HistorySection, SnapshotGolden) {
    // Validated against proto/snapshot.schema.json, and the rules a schema
    // cannot state, by the snapshot_schema test.
    const SiteVerdicts v = earlier_daemon(1000 * kSecond, 7);
    const SnapshotContext context{"vm",          kHere.kernel_release, kHere.boot_id, "0.1.0",
                                  1795689321123, 1065 * kSecond,       70 * kSecond};
    kleak::test::expect_matches_golden("snapshot_history.json",
                                       snapshot_file_text(snapshot_document(context, Report{}), section_text(v)));
}

TEST(HistorySection, SitesWithoutPointsAreLeftOut) {
    SiteVerdicts v(kPeriod, VerdictRules{});
    SiteStats free_only;  // a site that only frees has no history
    free_only.call_site = kCache;
    v.sample(std::vector{site(kLeak, 1), free_only}, 1000 * kSecond);
    const json section = saved_section(v);
    ASSERT_EQ(section.at("sites").size(), 1u);
    EXPECT_EQ(section.at("sites").at(0).at("site_address"), "0xffffffff81000100");
}

TEST(HistorySection, RefusesWhatItDidNotWrite) {
    const json good = saved_section(earlier_daemon(1000 * kSecond, 3));
    ASSERT_TRUE(parse_history_section(good).histories);
    const auto with = [&](const std::function<void(json&)>& change) {
        json section = good;
        change(section);
        return refusal(section);
    };
    EXPECT_EQ(with([](json& s) { s["version"] = 2; }), "history.version is 2; this kleakd reads version 1");
    EXPECT_EQ(with([](json& s) { s["version"] = "1"; }),
              "history.version is not a number; this kleakd reads version 1");
    EXPECT_EQ(refusal(json::array()), "history is not an object");
    EXPECT_EQ(refusal(nullptr), "history is not an object");
    // Cut short: keys or points missing.
    EXPECT_EQ(with([](json& s) { s.erase("sites"); }), "history.sites is missing");
    EXPECT_EQ(with([](json& s) { s.erase("boot_id"); }), "history.boot_id is missing");
    EXPECT_EQ(with([](json& s) { s["sites"][1].erase("tiers"); }), "history.sites[1].tiers is missing");
    EXPECT_EQ(with([](json& s) { s["sites"][0]["tiers"].erase(3); }),
              "history.sites[0].tiers is not an array of 4 resolutions");
    EXPECT_EQ(with([](json& s) { s["sites"][0]["tiers"][0][2].erase(2); }),
              "history.sites[0].tiers[0][2] is not a point [t_ms, outstanding, bytes]");
    // Wrong types and values.
    EXPECT_EQ(with([](json& s) { s["interval_ns"] = -1; }), "history.interval_ns is not a non-negative integer");
    EXPECT_EQ(with([](json& s) { s["interval_ns"] = 0; }),
              "history.interval_ns is outside what kleakd samples at (up to 10 minutes)");
    EXPECT_EQ(with([](json& s) { s["sites"][0]["tiers"][0][1][2] = 1.5; }),
              "history.sites[0].tiers[0][1][2] is not a non-negative integer");
    EXPECT_EQ(with([](json& s) { s["sites"][0]["tiers"][0][1][1] = 1ull << 32; }),
              "history.sites[0].tiers[0][1][1] is more than a history keeps (2^32 - 1)");
    EXPECT_EQ(with([](json& s) { s["sites"][0]["tiers"][0][1][0] = ~0ull; }),
              "history.sites[0].tiers[0][1][0] is past the end of the clock");
    EXPECT_EQ(with([](json& s) { s["sites"][0]["tiers"][0][2][0] = s["sites"][0]["tiers"][0][1][0]; }),
              "history.sites[0].tiers[0][2] is not later than the point before it");
    for (const char* address : {"ffffffff81000100", "0x", "0xffffffff8100010z", "0x1ffffffff81000100", "0x0"})
        EXPECT_EQ(with([&](json& s) { s["sites"][0]["site_address"] = address; }),
                  "history.sites[0].site_address is not a call-site address (0x and at most 16 hex digits)")
            << address;
    EXPECT_EQ(with([](json& s) { s["sites"][1]["site_address"] = s["sites"][0]["site_address"]; }),
              "history.sites[1].site_address 0xffffffff81000100 appears twice");
    EXPECT_EQ(with([](json& s) {
                  s["sites"][0]["tiers"] = {json::array(), json::array(), json::array(), json::array()};
              }),
              "history.sites[0].tiers holds no points");
    EXPECT_EQ(with([](json& s) {
                  s["sites"][0]["tiers"][3] = {{0, 1, 1}, {50ull * 86400 * 1000, 1, 1}};
              }),
              "history.sites[0].tiers[3] spans more than a history can (49 days)");
}

TEST(HistorySection, RefusesHugeArraysBeforeReadingThem) {
    json section = saved_section(earlier_daemon(1000 * kSecond, 3));
    json& tier0 = section["sites"][0]["tiers"][0];
    tier0 = json::array();
    for (std::uint64_t k = 0; k <= kHistoryTiers[0].capacity; ++k) tier0.push_back({k + 1, 1, 1});
    EXPECT_EQ(refusal(section), "history.sites[0].tiers[0] holds 92 points; resolution 0 keeps at most 91");
    section["sites"] = json::array();
    section["sites"].get_ref<json::array_t&>().resize(kMaxSavedSites + 1);  // nulls: never looked at
    EXPECT_EQ(refusal(section), "history.sites holds 1048577 sites, more than the 1048576 kleakd reads back");
}

// --- read from a snapshot's text, as the daemon does ------------------------------------

ParsedHistorySection read_text(const std::string& text) {
    std::istringstream in(text);
    return read_history_section(in);
}

// A snapshot document without its history.
json report_document() {
    return snapshot_document(SnapshotContext{"vm", kHere.kernel_release, kHere.boot_id, "0.1.0", 1, 2, 3}, Report{});
}

json snapshot_with(const json& section) {
    json doc = report_document();
    doc["history"] = section;
    return doc;
}

std::string snapshot_text(const SiteVerdicts& v) { return snapshot_file_text(report_document(), section_text(v)); }

TEST(HistoryFromText, ReadsWhatTheTreeParseReads) {
    const SiteVerdicts v = earlier_daemon(1000 * kSecond, 1081);
    const ParsedHistorySection read = read_text(snapshot_text(v));
    ASSERT_TRUE(read.histories) << read.error;
    const SavedHistories tree = parsed(saved_section(v));
    EXPECT_EQ(read.histories->origin.boot_id, tree.origin.boot_id);
    EXPECT_EQ(read.histories->origin.interval_ns, tree.origin.interval_ns);
    EXPECT_EQ(read.histories->sites, tree.sites);
}

TEST(HistoryFromText, AFullSiteIsReadBack) {
    // Every resolution full (30 days at 10 s; 715 points): the most a site holds.
    HistoryTiers full;
    for (std::size_t t = 0; t < full.size(); ++t)
        for (std::uint64_t k = 0; k < kHistoryTiers[t].capacity; ++k)
            full[t].push_back({(1'000'000 + k * 1000) * 1'000'000, 4'000'000'000 + k, 1ull << 40});
    SiteVerdicts v(kPeriod, VerdictRules{});
    SavedSites sites;
    sites.emplace(kLeak, full);
    v.restore(std::move(sites));
    const ParsedHistorySection read =
        read_text(snapshot_file_text(report_document(), history_section_text(v, {}, kHere)));
    ASSERT_TRUE(read.histories) << read.error;
    EXPECT_EQ(read.histories->sites.at(kLeak), full);
}

TEST(HistoryFromText, RefusesACutShortFileAndSaysWhenThereIsNoHistory) {
    const std::string text = snapshot_text(earlier_daemon(1000 * kSecond, 30));
    for (const std::size_t cut : {std::size_t{0}, text.size() / 3, text.size() / 2, text.size() - 3}) {
        const ParsedHistorySection read = read_text(text.substr(0, cut));
        EXPECT_FALSE(read.histories) << cut;
        EXPECT_FALSE(read.missing) << cut;
        EXPECT_EQ(read.error.rfind("not a JSON document: [json.exception.parse_error.", 0), 0u) << read.error;
    }
    EXPECT_EQ(read_text("[1, 2]").error, "not a JSON object");
    const ParsedHistorySection none = read_text(report_document().dump());
    EXPECT_FALSE(none.histories);
    EXPECT_TRUE(none.missing);
    EXPECT_EQ(none.error, "no history in it (written by an older kleakd)");
}

TEST(HistoryFromText, RefusesWhatTheTreeParseRefuses) {
    json section = saved_section(earlier_daemon(1000 * kSecond, 3));
    section["version"] = 2;
    section["sites"][1] = 7;  // the version is what matters: another version may differ anywhere
    EXPECT_EQ(read_text(snapshot_with(section).dump()).error, "history.version is 2; this kleakd reads version 1");
    section["version"] = 1;
    EXPECT_EQ(read_text(snapshot_with(section).dump()).error, "history.sites[1] is not an object");
    section["sites"][1] = json::array({1, 2});
    EXPECT_EQ(read_text(snapshot_with(section).dump()).error, "history.sites[1] is not an object");
    section["sites"][1] = section["sites"][0];
    EXPECT_EQ(read_text(snapshot_with(section).dump()).error,
              "history.sites[1].site_address 0xffffffff81000100 appears twice");
    section["sites"].erase(1);
    section["sites"][0]["tiers"][0][0][1] = -4;
    EXPECT_EQ(read_text(snapshot_with(section).dump()).error,
              "history.sites[0].tiers[0][0][1] is not a non-negative integer");
    section.erase("boot_id");
    EXPECT_EQ(read_text(snapshot_with(section).dump()).error, "history.boot_id is missing");
}

TEST(HistoryFromText, AHugeEntryIsRefusedWithoutBeingKept) {
    json section = saved_section(earlier_daemon(1000 * kSecond, 3));
    json& tier = section["sites"][0]["tiers"][3];
    for (std::uint64_t k = 0; k < 100'000; ++k) tier.push_back({2'000'000 + k, 1, 1});
    EXPECT_EQ(read_text(snapshot_with(section).dump()).error,
              "history.sites[0] is larger than any history kleakd writes");
    // Just past what a full site takes: still read, then refused for its tier.
    tier = json::array();
    for (std::uint64_t k = 0; k <= kHistoryTiers[3].capacity; ++k) tier.push_back({2'000'000 + k, 1, 1});
    EXPECT_EQ(read_text(snapshot_with(section).dump()).error,
              "history.sites[0].tiers[3] holds 361 points; resolution 3 keeps at most 360");
}

TEST(HistorySection, OnlyThisBootKernelAndIntervalCarryOver) {
    EXPECT_EQ(why_not_restore(kHere, kHere), std::nullopt);
    HistoryOrigin other = kHere;
    other.boot_id = "0b9d3c6e-0000-4000-8000-000000000000";
    const auto boot = why_not_restore(other, kHere);
    ASSERT_TRUE(boot);
    EXPECT_NE(boot->find("another boot (boot_id 0b9d3c6e-0000-4000-8000-000000000000, this one 6c1f0e6e"),
              std::string::npos)
        << *boot;
    EXPECT_NE(boot->find("KASLR"), std::string::npos);
    other = kHere;
    other.kernel_release = "6.1.0";
    EXPECT_EQ(why_not_restore(other, kHere), "written under kernel 6.1.0, this is 6.18.0-test");
    other = kHere;
    other.interval_ns = kSecond;
    EXPECT_EQ(why_not_restore(other, kHere),
              "sampled every 1s and verdicts.interval is now 10s: old and new points would not line up");
    HistoryOrigin unknown_boot = kHere;
    unknown_boot.boot_id.clear();
    EXPECT_TRUE(why_not_restore(kHere, unknown_boot));
}

// --- after a restart -----------------------------------------------------------------

constexpr std::uint64_t kEarlierStart = 1000 * kSecond;
constexpr std::uint64_t kEarlierSamples = 91;  // 15 minutes: the leak is growing
// The new daemon's first sample: 30 s after the earlier daemon's last.
constexpr std::uint64_t kRestart = kEarlierStart + (kEarlierSamples - 1) * kPeriod + 30 * kSecond;

SiteVerdicts restarted(std::uint64_t samples_before = kEarlierSamples) {
    const SiteVerdicts before = earlier_daemon(kEarlierStart, samples_before);
    SiteVerdicts after(kPeriod, VerdictRules{});
    after.restore(parsed(saved_section(before)).sites);
    return after;
}

TEST(Restart, TheEarlierDaemonSawALeak) {
    const SiteVerdicts before = earlier_daemon(kEarlierStart, kEarlierSamples);
    EXPECT_EQ(before.judgement(0).verdict, Verdict::growing);
}

TEST(Restart, VerdictsJudgeOnlyPointsSampledAfterIt) {
    SiteVerdicts v = restarted();
    EXPECT_EQ(v.pending().size(), 2u);
    EXPECT_EQ(v.restart_ns(), 0u);  // before the first sample
    // The new daemon sees the leak's allocations from zero: one a sample.
    for (std::uint64_t k = 0; k < 3; ++k) v.sample(std::vector{site(kLeak, k + 1)}, kRestart + k * kPeriod);
    EXPECT_EQ(v.restart_ns(), kRestart);
    json no_sites = json::array();
    EXPECT_EQ(annotate_verdicts(no_sites, Tracker{}, v).at("restart_ns"), kRestart);  // the snapshot says so
    EXPECT_EQ(v.histories().series(0, 0).size(), kEarlierSamples);  // 88 restored + 3 new: the whole series shown
    SiteJudgement j = v.judgement(0);
    EXPECT_EQ(j.verdict, Verdict::young) << j.reason;  // 20 s of its own history, not 15 min
    EXPECT_EQ(j.history_ns, 20 * kSecond);
    EXPECT_EQ(j.reason, "only 20s of history; judged after 1m");

    for (std::uint64_t k = 3; k < 10; ++k) v.sample(std::vector{site(kLeak, k + 1)}, kRestart + k * kPeriod);
    j = v.judgement(0);
    EXPECT_EQ(j.verdict, Verdict::growing) << j.reason;
    EXPECT_EQ(j.history_ns, 90 * kSecond);
    EXPECT_NEAR(j.growth_per_hour, 360, 1);
    // The start-up note, as after a fresh start: caches refill from empty too.
    EXPECT_NE(j.reason.find("kleakd started only 90s ago"), std::string::npos) << j.reason;
}

TEST(Restart, RestoredPointsDoNotMakeAFlatSiteGrowNorAGrowingOneFlat) {
    // Before: growing for 15 minutes. After: the new daemon sees none of it
    // and the site flat at 2 for 2 minutes: steady, judged on its own points.
    SiteVerdicts v = restarted();
    for (std::uint64_t k = 0; k < 13; ++k) v.sample(std::vector{site(kLeak, 2)}, kRestart + k * kPeriod);
    const SiteJudgement j = v.judgement(0);
    EXPECT_EQ(j.verdict, Verdict::steady) << j.reason;
    EXPECT_EQ(j.reason, "flat: trend +0.0/h over 2m");
}

TEST(Restart, ASiteFirstSeenLaterTakesItsHistoryAtItsFirstSample) {
    SiteVerdicts v = restarted();
    // Only the cache allocates at first: the leak's history waits.
    v.sample(std::vector{site(kCache, 1)}, kRestart);
    EXPECT_EQ(v.pending().size(), 1u);
    EXPECT_TRUE(v.pending().contains(kLeak));
    // Still in the next snapshot, so that another restart keeps it.
    const json section = saved_section(v, {site(kCache, 1)});
    ASSERT_EQ(section.at("sites").size(), 2u);
    EXPECT_EQ(section.at("sites").at(1).at("site_address"), "0xffffffff81000100");
    EXPECT_EQ(section.at("sites").at(1).at("tiers").at(0).size(), kEarlierSamples);

    // The leak shows up, as the new tracker's site 2 (a site new to both is 1).
    const std::vector<SiteStats> later{site(kCache, 1), site(kLate, 1), site(kLeak, 1)};
    v.sample(later, kRestart + kPeriod);
    EXPECT_TRUE(v.pending().empty());
    const auto leak = v.histories().series(2, 0);
    ASSERT_EQ(leak.size(), kHistoryTiers[0].capacity);  // the oldest restored point made room
    EXPECT_EQ(leak.front(), (HistoryPoint{kEarlierStart + kPeriod, 2, 128}));
    EXPECT_EQ(leak[leak.size() - 2].outstanding, kEarlierSamples);
    EXPECT_EQ(leak.back(), (HistoryPoint{kRestart + kPeriod, 1, 64}));
    EXPECT_EQ(v.histories().series(2, 1).size(), 16u);  // every minute of 15 (the new point is 40 s later)
    EXPECT_EQ(v.histories().series(1, 0).size(), 1u);   // the new site: its own point only
    EXPECT_EQ(v.judgement(2).verdict, Verdict::young);
    // The cache's restored history: 91 + 2 points, the oldest two gone.
    EXPECT_EQ(v.histories().series(0, 0).front().t_ns, kEarlierStart + 2 * kPeriod);
}

TEST(Restart, HistoryShowsTheWholeSeriesWithTheRestartMarked) {
    SiteVerdicts before(kPeriod, VerdictRules{});
    Tracker old_tracker, tracker;
    const auto allocate = [](Tracker& t, std::uint64_t ts, std::uint64_t ptr) {
        Event e;
        e.kind = EventKind::kmalloc;
        e.ts_ns = ts;
        e.ptr = ptr;
        e.call_site = kLeak;
        e.bytes_req = e.bytes_alloc = 64;
        t.apply(e);
    };
    for (std::uint64_t k = 0; k < 20; ++k) {
        allocate(old_tracker, kEarlierStart + k * kPeriod, 0xffff888000000000 + 64 * k);
        before.sample(old_tracker.sites(), kEarlierStart + k * kPeriod + 5 * 1'000'000);
    }
    SiteVerdicts v(kPeriod, VerdictRules{});
    v.restore(parsed(json::parse(history_section_text(before, old_tracker.sites(), kHere))).sites);
    const std::uint64_t restart = kEarlierStart + 25 * kPeriod + 123'456;  // not on a millisecond
    for (std::uint64_t k = 0; k < 3; ++k) {
        allocate(tracker, restart + k * kPeriod - 1000, 0xffff888100000000 + 64 * k);
        v.sample(tracker.sites(), restart + k * kPeriod);
    }
    EXPECT_EQ(v.restart_ns(), restart - 123'456);  // to the millisecond, as history times are kept
    FixedSymbolizer symbols({{kLeak, {"leaky_alloc", 0x10, ""}}});
    const json h = history_to_json(tracker, v, 0, 0, symbols);
    ASSERT_EQ(h.at("points").size(), 23u);
    EXPECT_EQ(h.at("restart_ns"), v.restart_ns());
    EXPECT_LT(h.at("points").at(19).at("t_ns").get<std::uint64_t>(), v.restart_ns());
    EXPECT_GE(h.at("points").at(20).at("t_ns").get<std::uint64_t>(), v.restart_ns());
    EXPECT_EQ(h.at("points").at(19).at("outstanding"), 20);
    EXPECT_EQ(h.at("points").at(20).at("outstanding"), 1);
    EXPECT_EQ(h.at("verdict"), "young");
    EXPECT_EQ(h.at("history_ns"), 20 * kSecond);
    // A daemon that restored nothing marks nothing.
    EXPECT_FALSE(history_to_json(old_tracker, before, 0, 0, symbols).contains("restart_ns"));
}

TEST(Restart, HistoryNotFromThisBootsPastIsNotAdopted) {
    // Points at or after the new daemon's first sample cannot be this boot's
    // past: a doctored file. The site starts afresh.
    SiteVerdicts v(kPeriod, VerdictRules{});
    v.restore(parsed(saved_section(earlier_daemon(kRestart, 3))).sites);
    v.sample(std::vector{site(kLeak, 1)}, kRestart + kPeriod);
    EXPECT_FALSE(v.pending().contains(kLeak));
    EXPECT_EQ(v.histories().series(0, 0).size(), 1u);
}

TEST(Restart, ResetForgetsRestoredHistories) {
    SiteVerdicts v = restarted();
    v.sample(std::vector{site(kCache, 1)}, kRestart);
    ASSERT_FALSE(v.pending().empty());
    v.clear();
    EXPECT_TRUE(v.pending().empty());
    EXPECT_EQ(v.restart_ns(), 0u);
    v.sample(std::vector{site(kLeak, 1)}, kRestart + kPeriod);
    EXPECT_EQ(v.histories().series(0, 0).size(), 1u);
    EXPECT_EQ(v.restart_ns(), 0u);
}

TEST(Restart, AHistoryAdoptedAfterSevenWeeksKeepsOnlyReadableTimes) {
    // Times are kept modulo 2^32 ms (49.7 days): a point 49 days older than
    // the newest is dropped rather than read back wrong.
    HistoryTiers tiers;
    for (std::uint64_t k = 0; k < 4; ++k) tiers[3].push_back({kEarlierStart + k * 7200 * kSecond, k + 1, 64});
    tiers[0].push_back(tiers[3].back());
    SiteVerdicts v(kPeriod, VerdictRules{});
    SavedSites saved;
    saved.emplace(kLeak, tiers);
    v.restore(std::move(saved));
    const std::uint64_t later = kEarlierStart + 3 * 3600 * kSecond + kMaxHistorySpanNs;
    v.sample(std::vector{site(kLeak, 9)}, later);
    const auto coarse = v.histories().series(0, 3);
    ASSERT_EQ(coarse.size(), 3u);  // the points at 0 h and 2 h are gone
    EXPECT_EQ(coarse[0], tiers[3][2]);
    EXPECT_EQ(coarse[1], tiers[3][3]);
    EXPECT_EQ(coarse[2].t_ns, later);
    EXPECT_EQ(v.histories().series(0, 0).size(), 2u);
}

TEST(HistoryRing, DropsPointsTooOldToReadBackEvenWhenFull) {
    HistoryRing ring(3);
    for (std::uint64_t k = 0; k < 5; ++k) ring.push({k * kSecond, k, k});  // full, wrapped
    ring.push({4 * kSecond + kMaxHistorySpanNs, 9, 9});
    ASSERT_EQ(ring.size(), 1u);
    EXPECT_EQ(ring.at(0), (HistoryPoint{4 * kSecond + kMaxHistorySpanNs, 9, 9}));
    ring.push({5 * kSecond + kMaxHistorySpanNs, 10, 10});
    ring.push({6 * kSecond + kMaxHistorySpanNs, 11, 11});
    ring.push({7 * kSecond + kMaxHistorySpanNs, 12, 12});  // full again: the oldest goes as always
    ASSERT_EQ(ring.size(), 3u);
    EXPECT_EQ(ring.at(0).outstanding, 10u);
    EXPECT_EQ(ring.at(2).outstanding, 12u);
}

// --- snapshot text ---------------------------------------------------------------------

TEST(SnapshotFileText, TheDocumentPrettyWithTheHistoryLast) {
    const json doc = {{"b", 1}, {"a", {{"x", "y\xff"}}}};
    EXPECT_EQ(snapshot_file_text(doc, "{}"),
              "{\n"
              "  \"a\": {\n"
              "    \"x\": \"y\xef\xbf\xbd\"\n"  // invalid UTF-8 replaced
              "  },\n"
              "  \"b\": 1,\n"
              "  \"history\": {}\n"
              "}\n");
    EXPECT_EQ(snapshot_file_text(json::object(), "{}"), "{\n  \"history\": {}\n}\n");
    // An empty history is still a section.
    const SiteVerdicts none(kPeriod, VerdictRules{});
    const json parsed_back = json::parse(snapshot_file_text(doc, section_text(none)));
    EXPECT_EQ(parsed_back.at("history").at("sites"), json::array());
    EXPECT_TRUE(parse_history_section(parsed_back.at("history")).histories);
}

}  // namespace
