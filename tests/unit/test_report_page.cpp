// The HTML report's data (core/report_page.h): sites in `suspects` order,
// the flame graph's stacks, the growth curves joined across history tiers
// with times before the snapshot, the restart mark, the table. The fixture
// tests/fixtures/snapshot_report.json is also what the headless-browser
// test draws (tests/report).
#include <gtest/gtest.h>

#include <sstream>

#include "core/history_section.h"
#include "core/report_page.h"
#include "test_helpers.h"

namespace {

using namespace kleak::core;
using nlohmann::json;

constexpr std::uint64_t kSecond = 1'000'000'000;

json fixture_document() {
    json doc = json::parse(kleak::test::read_fixture("snapshot_report.json"));
    doc.erase("history");
    return doc;
}

SavedSites fixture_histories() {
    std::istringstream in(kleak::test::read_fixture("snapshot_report.json"));
    ParsedHistorySection section = read_history_section(in);
    EXPECT_TRUE(section.histories.has_value()) << section.error;
    return section.histories ? section.histories->sites : SavedSites{};
}

std::vector<std::string> functions_in(const json& rows) {
    std::vector<std::string> out;
    for (const json& row : rows) out.push_back(row.at("function"));
    return out;
}

const std::string kEvil =
    "</script><script>window.kleakPwned=1</script><img src=x onerror=\"window.kleakPwned=2\">&amp;";

TEST(ReportPage, SitesComeInSuspectsOrderAndOnlyThoseHoldingMemory) {
    const json doc = fixture_document();
    std::vector<std::string> order;
    for (const std::size_t i : suspects_order(doc)) order.push_back(doc.at("sites")[i].at("function"));
    // growing, young, reclaimable, steady, untracked-frees; exit_mmap holds nothing.
    EXPECT_EQ(order, (std::vector<std::string>{"alloc_pipe_info", "copy_process", "alloc_inode", kEvil,
                                               "mas_preallocate"}));
    EXPECT_EQ(sites_to_plot(doc, 2), (std::vector<std::string>{"0xffffffff81300100", "0xffffffff81300500"}));
    EXPECT_TRUE(sites_to_plot(doc, 0).empty());
}

TEST(ReportPage, FlameStacksAreAllocatorCacheFunctionSiteWeighedByOutstandingBytes) {
    const json page = report_page_data(fixture_document(), {}, {});
    const json& stacks = page.at("flame").at("stacks");
    ASSERT_EQ(stacks.size(), 5u);
    EXPECT_EQ(stacks[0].at("frames"),
              json::array({"slab", "kmalloc-cg-1k", "alloc_pipe_info", "alloc_pipe_info+0xd7"}));
    EXPECT_EQ(stacks[0].at("bytes"), 360 * 1024);
    EXPECT_EQ(stacks[0].at("count"), 360);
    EXPECT_EQ(stacks[0].at("verdict"), "growing");
    std::uint64_t total = 0;
    for (const json& s : stacks) total += s.at("bytes").get<std::uint64_t>();
    EXPECT_EQ(total, page.at("totals").at("outstanding_bytes").get<std::uint64_t>());
    EXPECT_EQ(page.at("flame").at("levels").size(), stacks[0].at("frames").size());
}

TEST(ReportPage, AllocatorAndCacheFallBackForOlderSnapshots) {
    json doc = fixture_document();
    for (json& site : doc.at("sites")) site.erase("family");
    doc.at("sites")[0]["cache"] = "";  // kleakd could not say
    const json page = report_page_data(doc, {}, {});
    const json& stacks = page.at("flame").at("stacks");
    EXPECT_EQ(stacks[0].at("frames")[0], "slab");  // all there was then
    EXPECT_EQ(stacks[0].at("frames")[1], "cache unknown");
    EXPECT_EQ(stacks[1].at("frames")[1], "task_struct");
}

TEST(ReportPage, CurvesJoinTheTiersInSecondsBeforeTheSnapshot) {
    const json page = report_page_data(fixture_document(), fixture_histories(), {});
    const json& curves = page.at("curves");
    ASSERT_EQ(curves.size(), 5u);  // every site holding memory, up to 8
    EXPECT_EQ(functions_in(curves), (std::vector<std::string>{"alloc_pipe_info", "copy_process", "alloc_inode",
                                                               kEvil, "mas_preallocate"}));
    const json& pipe = curves[0].at("points");
    // 91 samples at 10 s over the last 15 min, and before them the minute tier's 15 points from 30 min
    // back (its later ones overlap the samples; the 2 coarser tiers' one point is its first).
    ASSERT_EQ(pipe.size(), 91u + 15u);
    EXPECT_DOUBLE_EQ(pipe.front()[0].get<double>(), -1800.0);
    EXPECT_DOUBLE_EQ(pipe.back()[0].get<double>(), 0.0);
    EXPECT_DOUBLE_EQ(pipe[15][0].get<double>(), -900.0);  // the first sample of tier 0
    for (std::size_t i = 1; i < pipe.size(); ++i) EXPECT_LT(pipe[i - 1][0], pipe[i][0]) << i;
    EXPECT_EQ(pipe.back()[1], 360);
    EXPECT_EQ(pipe.back()[2], 360 * 64);
    EXPECT_TRUE(curves[1].at("points").empty());  // copy_process: no history saved
    EXPECT_DOUBLE_EQ(page.at("restart_s").get<double>(), -600.0);

    ReportPageOptions two;
    two.curves = 2;
    EXPECT_EQ(report_page_data(fixture_document(), fixture_histories(), two).at("curves").size(), 2u);
}

TEST(ReportPage, MergedHistoryTakesCoarserTiersOnlyBeforeTheFinerOnes) {
    HistoryTiers tiers;
    tiers[0] = {{100 * kSecond, 5, 50}, {110 * kSecond, 6, 60}};
    tiers[1] = {{40 * kSecond, 1, 10}, {100 * kSecond, 5, 50}};
    tiers[2] = {{40 * kSecond, 1, 10}};
    tiers[3] = {{10 * kSecond, 0, 0}};
    const std::vector<HistoryPoint> merged = merged_history(tiers);
    const std::vector<HistoryPoint> expected = {
        {10 * kSecond, 0, 0}, {40 * kSecond, 1, 10}, {100 * kSecond, 5, 50}, {110 * kSecond, 6, 60}};
    EXPECT_EQ(merged, expected);
    EXPECT_TRUE(merged_history(HistoryTiers{}).empty());

    const json reply = {{"points", {{{"t_ns", 5}, {"outstanding", 2}, {"bytes", 64}}}}};
    EXPECT_EQ(history_points_from_json(reply), (std::vector<HistoryPoint>{{5, 2, 64}}));
}

TEST(ReportPage, TableHasEveryHoldingSiteWithVerdictReasonsAndGrowth) {
    ReportPageOptions options;
    options.curves = 1;
    options.table_rows = 4;
    options.source = "snapshot.json";
    const json page = report_page_data(fixture_document(), fixture_histories(), options);
    const json& table = page.at("table");
    ASSERT_EQ(table.size(), 4u);
    EXPECT_EQ(page.at("table_total"), 5);
    EXPECT_EQ(table[0].at("site"), "alloc_pipe_info+0xd7");
    EXPECT_EQ(table[0].at("cache"), "kmalloc-cg-1k");
    EXPECT_EQ(table[0].at("verdict"), "growing");
    EXPECT_EQ(table[0].at("reasons")[0], "growing: trend +360/h over 15m, 100% of its changes rise, new high within 1m");
    EXPECT_EQ(table[0].at("outstanding"), 360);
    EXPECT_EQ(table[0].at("outstanding_bytes"), 360 * 1024);
    EXPECT_DOUBLE_EQ(table[0].at("growth_per_hour").get<double>(), 360.0);
    EXPECT_DOUBLE_EQ(table[0].at("growth_bytes_per_hour").get<double>(), 360.0 * 1024);
    EXPECT_TRUE(table[0].at("plotted").get<bool>());
    EXPECT_FALSE(table[1].at("plotted").get<bool>());
    EXPECT_EQ(page.at("source"), "snapshot.json");
    EXPECT_EQ(page.at("host"), "fixture-host");
    EXPECT_EQ(page.at("losses").at("dropped_per_cpu"), json::array({5, 0}));
    EXPECT_EQ(page.at("verdicts").at("interval_ns"), 10 * kSecond);
    EXPECT_EQ(page.at("verdicts").at("growing"), 1);
}

TEST(ReportPage, ASnapshotWithoutVerdictsOrHistoriesStillMakesAPage) {
    json doc = fixture_document();
    doc.erase("verdicts");
    for (json& site : doc.at("sites")) {
        site.erase("verdict");
        site.erase("reasons");
        site.erase("growth_per_hour");
        site.erase("growth_bytes_per_hour");
    }
    const json page = report_page_data(doc, {}, {});
    EXPECT_TRUE(page.at("restart_s").is_null());
    EXPECT_EQ(page.at("table")[0].at("verdict"), "young");
    EXPECT_EQ(page.at("table")[0].at("reasons"), json::array());
    EXPECT_EQ(page.at("table")[0].at("function"), "alloc_pipe_info");  // all alike: the most bytes first
    doc.erase("sites");
    EXPECT_THROW(report_page_data(doc, {}, {}), json::exception);
}

}  // namespace
