// kleakctl diff: what grew between two snapshots, matched by site name.
#include "kleakctl/snapshot_diff.h"

#include <gtest/gtest.h>

namespace {

using kleak::ctl::diff_snapshots;
using nlohmann::json;

json site(const char* name, std::uint64_t outstanding, std::uint64_t bytes, const char* verdict = nullptr) {
    json s = {{"site", name}, {"function", std::string(name).substr(0, std::string(name).find('+'))},
              {"outstanding", outstanding}, {"outstanding_bytes", bytes}};
    if (verdict) s["verdict"] = verdict;
    return s;
}

json snapshot(std::int64_t unix_ms, std::uint64_t uptime_ns, json sites, const char* boot = "b1",
              const char* host = "h") {
    return {{"time", "t" + std::to_string(unix_ms)}, {"unix_time_ms", unix_ms}, {"uptime_ns", uptime_ns},
            {"boot_id", boot},                       {"host", host},            {"sites", std::move(sites)}};
}

TEST(SnapshotDiff, SitesAreMatchedByNameAndRankedByBytesGained) {
    const json older = snapshot(1'000'000, 100, {site("a+0x1", 10, 1000), site("b+0x2", 5, 500), site("gone+0x3", 7, 70)});
    const json newer = snapshot(1'060'000, 200,
                                {site("a+0x1", 12, 1200, "steady"), site("b+0x2", 105, 10500, "growing"),
                                 site("new+0x4", 3, 300, "young"), site("idle+0x5", 0, 0, "steady")});
    const auto d = diff_snapshots(older, newer);
    EXPECT_TRUE(d.warnings.empty());
    EXPECT_EQ(d.seconds_between, 60);
    ASSERT_EQ(d.sites.size(), 4u);  // idle (0 then and now) left out
    EXPECT_EQ(d.sites[0].site, "b+0x2");
    EXPECT_EQ(d.sites[0].delta_outstanding(), 100);
    EXPECT_EQ(d.sites[0].delta_bytes(), 10000);
    EXPECT_EQ(d.sites[0].verdict, "growing");
    EXPECT_EQ(d.sites[1].site, "new+0x4");
    EXPECT_EQ(d.sites[2].site, "a+0x1");
    EXPECT_EQ(d.sites[3].site, "gone+0x3");
    EXPECT_EQ(d.sites[3].delta_outstanding(), -7);
    EXPECT_EQ(d.sites[3].verdict, "");

    const json j = kleak::ctl::diff_to_json(d, 2);
    EXPECT_EQ(j.at("sites").size(), 2u);
    EXPECT_EQ(j.at("sites").at(0).at("delta_outstanding_bytes"), 10000);
    const std::string text = kleak::ctl::format_diff(d, 0);
    EXPECT_NE(text.find("(60 s): 4 call sites"), std::string::npos) << text;
    EXPECT_NE(text.find("+10000 growing          b+0x2"), std::string::npos) << text;
    EXPECT_NE(text.find("-70 -                gone+0x3"), std::string::npos) << text;
}

TEST(SnapshotDiff, WarnsAboutBootsHostsRestartsAndOrder) {
    const json a = snapshot(1000, 500, json::array());
    EXPECT_EQ(diff_snapshots(a, snapshot(2000, 100, json::array())).warnings.at(0),
              "kleakd restarted or was reset between them: the newer counts from then");
    EXPECT_NE(diff_snapshots(a, snapshot(2000, 900, json::array(), "b2")).warnings.at(0).find("different boots"),
              std::string::npos);
    EXPECT_NE(diff_snapshots(a, snapshot(2000, 900, json::array(), "b1", "other")).warnings.at(0).find("different hosts"),
              std::string::npos);
    EXPECT_NE(diff_snapshots(snapshot(5000, 900, json::array()), a).warnings.at(0).find("the newer one"),
              std::string::npos);
}

TEST(SnapshotDiff, ADocumentThatIsNoSnapshotIsNamed) {
    try {
        diff_snapshots(json{{"leaks", 1}}, snapshot(1, 1, json::array()));
        FAIL() << "no exception";
    } catch (const std::runtime_error& e) {
        EXPECT_EQ(std::string(e.what()), "the older file is not a kleakd snapshot: it has no \"sites\"");
    }
    EXPECT_THROW(diff_snapshots(snapshot(1, 1, json::array()), json::array()), std::runtime_error);
}

}  // namespace
