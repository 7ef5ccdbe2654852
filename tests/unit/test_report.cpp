// The kleak report: ordering, JSON and text (golden files), loss warnings.
#include <gtest/gtest.h>

#include "core/report.h"
#include "core/snapshot.h"
#include "test_helpers.h"

namespace kleak::core {
namespace {

using test::alloc_event;
using test::free_event;

constexpr std::uint64_t kAllocSkb = 0xffffffff81a00010;     // __alloc_skb+0x10
constexpr std::uint64_t kFooInit = 0xffffffffc0a01020;      // foo_init+0x20 [foo]
constexpr std::uint64_t kUnknownSite = 0xffffffff81ccc000;  // not in the symbol map
constexpr std::uint64_t kSkbRelease = 0xffffffff81a00440;   // skb_release_data+0x40
constexpr std::uint64_t kFooExit = 0xffffffffc0a00008;      // foo_exit+0x8 [foo]

constexpr std::uint64_t kP1 = 0xffff888000010000;
constexpr std::uint64_t kP2 = 0xffff888000020000;
constexpr std::uint64_t kP3 = 0xffff888000030000;
constexpr std::uint64_t kP4 = 0xffff888000040000;
constexpr std::uint64_t kP5 = 0xffff888000050000;
constexpr std::uint64_t kStray = 0xffff8880dead0000;

FixedSymbolizer sample_symbolizer() {
    return FixedSymbolizer({
        {kAllocSkb, Symbol{"__alloc_skb", 0x10, ""}},
        {kFooInit, Symbol{"foo_init", 0x20, "foo"}},
        {kSkbRelease, Symbol{"skb_release_data", 0x40, ""}},
        {kFooExit, Symbol{"foo_exit", 0x8, "foo"}},
    });
}

// A small stream touching every report section: slack, matched frees from
// another site, a module site, an unknown site, unmatched frees and a
// replaced allocation. Settled, as `kleakd report` settles a finished
// stream: the reallocation of P2 counts the first allocation replaced.
Tracker sample_tracker() {
    Tracker tracker;
    std::uint64_t ts = 1000;
    tracker.apply(alloc_event({.ts = ts++, .ptr = kP1, .site = kAllocSkb, .req = 100, .alloc = 128}));
    tracker.apply(alloc_event({.ts = ts++, .ptr = kP2, .site = kAllocSkb, .req = 200, .alloc = 256}));
    tracker.apply(alloc_event({.ts = ts++, .cpu = 1, .ptr = kP3, .site = kFooInit, .req = 64, .alloc = 64, .kind = EventKind::cache_alloc}));
    tracker.apply(alloc_event({.ts = ts++, .cpu = 1, .ptr = kP4, .site = kFooInit, .req = 64, .alloc = 64, .kind = EventKind::cache_alloc}));
    tracker.apply(alloc_event({.ts = ts++, .ptr = kP5, .site = kUnknownSite, .req = 1000, .alloc = 1024}));
    tracker.apply(free_event({.ts = ts++, .cpu = 1, .ptr = kP1, .site = kSkbRelease}));
    tracker.apply(free_event({.ts = ts++, .ptr = kP3, .site = kFooExit, .kind = EventKind::cache_free}));
    tracker.apply(free_event({.ts = ts++, .ptr = kStray, .site = kSkbRelease}));
    tracker.apply(free_event({.ts = ts++, .ptr = kStray + 64, .site = kFooExit, .kind = EventKind::cache_free}));
    tracker.apply(free_event({.ts = ts++, .ptr = kStray + 128, .site = kFooExit, .kind = EventKind::cache_free}));
    tracker.apply(alloc_event({.ts = ts++, .ptr = kP2, .site = kUnknownSite, .req = 500, .alloc = 512}));
    tracker.settle();
    return tracker;
}

Losses sample_losses() {
    Losses losses;
    losses.dropped_per_cpu = {0, 3};
    losses.late = 2;
    losses.undecodable = 1;
    losses.buffer_size = 8u << 20;
    losses.suggested_buffer_size = suggest_buffer_size(8u << 20, 8u << 20, 3, 48);
    // One program counted by bpf_stats, one not; one missed nested runs.
    losses.programs = {{"kmem:kmalloc", 1000, 61000, 0}, {"kmem:kfree", 0, 0, 4}};
    return losses;
}


Report sample_report() {
    FixedSymbolizer symbolizer = sample_symbolizer();
    return build_report(sample_tracker(), sample_losses(), symbolizer);
}

std::size_t count_of(const std::string& text, const std::string& needle) {
    std::size_t n = 0;
    for (std::size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
    return n;
}

TEST(Report, RecursionMissesAndBpfCostAreReported) {
    const Report report = sample_report();
    EXPECT_EQ(report.losses.recursion_misses(), 4u);
    const nlohmann::json json = report_to_json(report);
    EXPECT_EQ(json.at("losses").at("recursion_misses"), 4);
    EXPECT_DOUBLE_EQ(json.at("losses").at("programs").at(0).at("ns_per_run").get<double>(), 61.0);
    EXPECT_FALSE(json.at("losses").at("programs").at(1).contains("ns_per_run"));
    const std::string text = report_to_text(report, 0);
    EXPECT_NE(text.find("recursion misses 4"), std::string::npos) << text;
    EXPECT_NE(text.find("skipped 4 program runs"), std::string::npos) << text;
    EXPECT_NE(text.find("BPF cost per event: kmem:kmalloc 61 ns (1000 runs)\n"), std::string::npos) << text;
}

TEST(Report, SampleStreamHasTheExpectedTotals) {
    // Guards the golden files: if these move, the goldens must be re-reviewed.
    const Tracker tracker = sample_tracker();
    Totals expected;
    expected.allocs = 6;
    expected.frees = 2;
    expected.bytes_alloc = 2048;
    expected.bytes_req = 1928;
    expected.bytes_freed = 192;
    expected.unmatched_frees = 3;
    expected.replaced = 1;
    expected.outstanding = 3;
    expected.outstanding_bytes = 1600;
    EXPECT_EQ(test::totals_fields(tracker.totals()), test::totals_fields(expected));
}

TEST(Report, SitesOrderedByOutstandingBytesThenBytesAllocatedThenAddress) {
    const Report report = sample_report();
    std::vector<std::string> order;
    for (const SiteRow& row : report.sites) order.push_back(row.site);
    EXPECT_EQ(order, (std::vector<std::string>{
                         "0xffffffff81ccc000",           // 1536 outstanding bytes
                         "foo_init+0x20 [foo]",          // 64
                         "__alloc_skb+0x10",             // 0 outstanding, 384 allocated
                         "skb_release_data+0x40",        // 0, 0, lower address
                         "foo_exit+0x8 [foo]",
                     }));
    EXPECT_EQ(report.sites[0].function, "0xffffffff81ccc000");  // unknown: the hex address
    EXPECT_EQ(report.sites[1].function, "foo_init");
    EXPECT_EQ(test::totals_fields(report.totals), test::totals_fields(sample_tracker().totals()));
}

TEST(Report, JsonGolden) {
    test::expect_matches_golden("report_small.json", report_to_json(sample_report()).dump(2) + "\n");
}

TEST(Snapshot, DocumentGolden) {
    // Validated against proto/snapshot.schema.json by the snapshot_schema test.
    const SnapshotContext context{"vm", "6.18.44", "2d80042b-d452-4acb-b04a-197478e0d9e1", "0.1.0",
                                  1795689321123, 539589671187, 3600000000000};
    test::expect_matches_golden("snapshot_small.json", snapshot_document(context, sample_report()).dump(2) + "\n");
}

TEST(Snapshot, TimeIsUtcWithMilliseconds) {
    EXPECT_EQ(iso8601_utc(0), "1970-01-01T00:00:00.000Z");
    EXPECT_EQ(iso8601_utc(1795689321123), "2026-11-26T10:35:21.123Z");
}

TEST(Report, TextGolden) {
    test::expect_matches_golden("report_small.txt", report_to_text(sample_report(), 0));
}

TEST(Report, JsonRoundTripGivesTheSameTextAndJson) {
    // kleakctl prints the daemon's JSON report with report_to_text: it must
    // read back exactly what the daemon would have printed.
    const Report original = sample_report();
    const Report back = report_from_json(report_to_json(original));
    EXPECT_EQ(report_to_json(back), report_to_json(original));
    EXPECT_EQ(report_to_text(back, 0), report_to_text(original, 0));
}

TEST(Report, ReorderedFreesAreReportedWhenThereAreAny) {
    // P1 is freed on CPU1 (stamped late: window 50..300) after CPU0 got it
    // back at 200: the free is the first allocation's.
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 100, .ptr = kP1, .site = kAllocSkb, .req = 100, .alloc = 128}));
    tracker.apply(alloc_event({.ts = 200, .ptr = kP1, .site = kFooInit, .req = 64, .alloc = 64}));
    tracker.apply(free_event({.ts = 300, .cpu = 1, .ptr = kP1, .site = kSkbRelease, .window = 250}));
    tracker.settle();
    FixedSymbolizer symbolizer = sample_symbolizer();
    const Report report = build_report(tracker, Losses{}, symbolizer);
    EXPECT_EQ(report.totals.reordered_frees, 1u);

    const std::string text = report_to_text(report, 0);
    EXPECT_NE(text.find("\nreordered frees:        1 ("), std::string::npos) << text;
    EXPECT_EQ(count_of(text, "replaced (missed free)"), 0u) << text;
    const nlohmann::json json = report_to_json(report);
    EXPECT_EQ(json.at("totals").at("reordered_frees"), 1);
    // kleakctl reads it back.
    const Report back = report_from_json(json);
    EXPECT_EQ(back.totals.reordered_frees, 1u);
    EXPECT_EQ(report_to_text(back, 0), text);

    // Without any, no line: the sample report has none.
    EXPECT_EQ(count_of(report_to_text(sample_report(), 0), "reordered"), 0u);
}

TEST(Report, FromJsonOfADocumentWithoutReorderedFreesReadsZero) {
    // Reports written before ABI 2 have no "reordered_frees".
    nlohmann::json json = report_to_json(sample_report());
    json.at("totals").erase("reordered_frees");
    EXPECT_EQ(report_from_json(json).totals.reordered_frees, 0u);
    EXPECT_EQ(report_to_text(report_from_json(json), 0), report_to_text(sample_report(), 0));
}

TEST(Report, FromJsonRejectsAnotherShape) {
    EXPECT_THROW(report_from_json(nlohmann::json{{"totals", 1}}), nlohmann::json::exception);
}

TEST(Report, TextGoldenWithTopTruncation) {
    test::expect_matches_golden("report_small_top1.txt", report_to_text(sample_report(), 1));
}

TEST(Report, TopTruncationSaysHowManyMoreRows) {
    const std::string text = report_to_text(sample_report(), 1);
    // allocations by caller: 3 sites with 2 each -> the first in report order shown, 2 more.
    EXPECT_NE(text.find("allocations by caller:\n     count  caller\n         2  0xffffffff81ccc000\n  ... 2 more\n"),
              std::string::npos)
        << text;
    // frees by caller: 2 sites; unfreed: 2 sites; unmatched: 2 sites; freed bytes: 2 sites.
    EXPECT_EQ(count_of(text, "  ... 1 more\n"), 4u) << text;
    EXPECT_EQ(count_of(text, "  ... 2 more\n"), 2u) << text;

    // top larger than every section: no truncation lines at all.
    EXPECT_EQ(count_of(report_to_text(sample_report(), 10), "more\n"), 0u);
    EXPECT_EQ(report_to_text(sample_report(), 10), report_to_text(sample_report(), 0));
}

TEST(Report, DropWarningAndBufferAdvice) {
    const std::string text = report_to_text(sample_report(), 0);
    EXPECT_NE(text.find("\nlosses: ring drops cpu0=0 cpu1=3 (total 3); late records 2; undecodable 1; "
                        "recursion misses 4\n"
                        "WARNING: 3 records were lost because a ring buffer overflowed; totals undercount and "
                        "unmatched frees/replaced may be inflated.\n"
                        "         a buffer of --buffer-size 32M per CPU would have held the burst (now 8M).\n"),
              std::string::npos)
        << text;
}

TEST(Report, DropWarningWithoutAdvice) {
    FixedSymbolizer symbolizer = sample_symbolizer();
    Losses losses = sample_losses();
    losses.suggested_buffer_size = 0;
    const std::string text = report_to_text(build_report(sample_tracker(), losses, symbolizer), 0);
    EXPECT_EQ(count_of(text, "WARNING: 3 records were lost"), 1u);
    EXPECT_EQ(count_of(text, "--buffer-size"), 0u);
}

TEST(Report, NoDropsNoWarning) {
    FixedSymbolizer symbolizer = sample_symbolizer();
    Losses losses = sample_losses();
    losses.dropped_per_cpu = {0, 0};
    losses.suggested_buffer_size = 0;
    losses.programs.clear();  // as for a replayed recording: no program line
    const Report report = build_report(sample_tracker(), losses, symbolizer);
    const std::string text = report_to_text(report, 0);
    EXPECT_NE(text.find("\nlosses: ring drops cpu0=0 cpu1=0 (total 0); late records 2; undecodable 1\n"),
              std::string::npos);
    EXPECT_EQ(count_of(text, "WARNING"), 0u);
    EXPECT_EQ(count_of(text, "--buffer-size"), 0u);
    // The text ends with the losses line.
    EXPECT_EQ(text.substr(text.size() - 14), "undecodable 1\n");
    EXPECT_EQ(report_to_json(report)["losses"]["dropped"], 0);
}

// A restarted daemon's gap (app/state_keeping.h) on the loss line and in
// the JSON, which reads back; no key without one (documents stay as before).
TEST(Report, UntracedGapOfARestartIsALoss) {
    FixedSymbolizer symbolizer = sample_symbolizer();
    Losses losses = sample_losses();
    EXPECT_FALSE(report_to_json(build_report(sample_tracker(), losses, symbolizer))["losses"].contains("untraced_gap_ns"));
    losses.untraced_gap_ns = 61'204'000'000;
    const Report report = build_report(sample_tracker(), losses, symbolizer);
    EXPECT_NE(report_to_text(report, 0).find("recursion misses 4; not traced for 61.204 s across a restart\n"),
              std::string::npos)
        << report_to_text(report, 0);
    const nlohmann::json json = report_to_json(report);
    EXPECT_EQ(json["losses"]["untraced_gap_ns"], 61'204'000'000u);
    EXPECT_EQ(report_from_json(json).losses.untraced_gap_ns, 61'204'000'000u);
}

TEST(MakeLosses, AdviceSizedForTheLargestRecordWithItsRingHeader) {
    // 3 drops * (56-byte kmem_cache_alloc record + 8-byte ring header) on top of an 8M
    // backlog, doubled: 32M.
    const Losses losses = make_losses({0, 3}, 2, 1, 8u << 20, 8u << 20);
    EXPECT_EQ(losses.dropped_per_cpu, (std::vector<std::uint64_t>{0, 3}));
    EXPECT_EQ(losses.dropped(), 3u);
    EXPECT_EQ(losses.late, 2u);
    EXPECT_EQ(losses.undecodable, 1u);
    EXPECT_EQ(losses.buffer_size, 8u << 20);
    EXPECT_EQ(losses.suggested_buffer_size, 32u << 20);

    // 4K ring, 1000 drops: 4096 + 64000 = 68096, doubled 136192 -> 256K.
    EXPECT_EQ(make_losses({1000}, 0, 0, 4096, 0).suggested_buffer_size, 256u << 10);
}

TEST(MakeLosses, NoDropsNoAdvice) {
    const Losses losses = make_losses({0, 0, 0}, 5, 0, 8u << 20, 8u << 20);
    EXPECT_EQ(losses.dropped(), 0u);
    EXPECT_EQ(losses.suggested_buffer_size, 0u);
}

TEST(Report, EmptyTrackerSaysNoneInEverySection) {
    FixedSymbolizer symbolizer({});
    const Tracker tracker;
    const std::string text = report_to_text(build_report(tracker, Losses{}, symbolizer), 0);
    EXPECT_EQ(count_of(text, "  (none)\n"), 6u) << text;
    EXPECT_EQ(count_of(text, "replaced"), 0u) << text;  // the replaced line only appears when non-zero
    EXPECT_NE(text.find("losses: ring drops (total 0); late records 0; undecodable 0\n"), std::string::npos) << text;
}

TEST(Report, LongSymbolNamesAreNotTruncated) {
    // KSYM_NAME_LEN is 512 since Rust symbols arrived: rows must carry the
    // whole name and the module.
    const std::string long_name(500, 'r');
    FixedSymbolizer symbolizer({{kAllocSkb, Symbol{long_name, 0x10, "rust_module_with_a_long_name"}}});
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 1, .ptr = kP1, .site = kAllocSkb, .req = 1, .alloc = 8}));
    const Report report = build_report(tracker, Losses{}, symbolizer);
    const std::string site = long_name + "+0x10 [rust_module_with_a_long_name]";
    const std::string text = report_to_text(report, 0);
    EXPECT_EQ(count_of(text, site + "\n"), 3u) << text;  // allocations, allocated bytes, unfreed
    EXPECT_EQ(count_of(top_table_text(top_sites_by_outstanding(tracker, 5, symbolizer)), site + "\n"), 1u);
}

TEST(Report, TopSitesByOutstanding) {
    FixedSymbolizer symbolizer = sample_symbolizer();
    const Tracker tracker = sample_tracker();

    const std::vector<SiteRow> top = top_sites_by_outstanding(tracker, 1, symbolizer);
    ASSERT_EQ(top.size(), 1u);
    EXPECT_EQ(top[0].site, "0xffffffff81ccc000");

    // Only sites with something outstanding, however large `top` is.
    const std::vector<SiteRow> all = top_sites_by_outstanding(tracker, 100, symbolizer);
    ASSERT_EQ(all.size(), 2u);
    EXPECT_EQ(all[1].site, "foo_init+0x20 [foo]");

    EXPECT_EQ(top_table_text(all),
              " outstanding          bytes     allocs      frees  caller\n"
              "           2           1536          2          0  0xffffffff81ccc000\n"
              "           1             64          2          1  foo_init+0x20 [foo]\n");
}

TEST(Report, TopTableWithNothingOutstanding) {
    EXPECT_EQ(top_table_text({}),
              " outstanding          bytes     allocs      frees  caller\n"
              "  (no outstanding allocations)\n");
}

TEST(Report, SymbolizesOnlyShownSitesForTheTopTable) {
    // The live table must not pay for symbolizing every site.
    struct CountingSymbolizer final : Symbolizer {
        std::vector<std::uint64_t> asked;
        Symbol resolve(std::uint64_t address) override {
            asked.push_back(address);
            return {};
        }
    } symbolizer;
    top_sites_by_outstanding(sample_tracker(), 1, symbolizer);
    EXPECT_EQ(symbolizer.asked, (std::vector<std::uint64_t>{kUnknownSite}));
}

}  // namespace
}  // namespace kleak::core
