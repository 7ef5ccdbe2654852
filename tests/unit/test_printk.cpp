// The kernel log in the core: decoding variable-length printk records, the
// "<N>" level prefix, the escaped one-line format, the in-memory PrintkLog,
// and printk lines coming out of the Pipeline in merged time order.
#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "core/event.h"
#include "core/pipeline.h"
#include "core/printk.h"
#include "test_helpers.h"

namespace kleak::core {
namespace {

using namespace std::string_literals;
using test::alloc_event;
using test::encode_event;
using test::free_event;
using test::printk_record;

constexpr std::uint64_t kPtr = 0xffff888012345678;
constexpr std::uint64_t kSite = 0xffffffff81234567;

using test::stale_event;

std::string text_of(std::span<const std::byte> record) {
    const auto text = printk_text(record);
    EXPECT_TRUE(text.has_value());
    return std::string(text.value_or(""));
}

// --- decoding ----------------------------------------------------------------------

TEST(PrintkDecode, ANormalLineAllFields) {
    const auto record = printk_record({.ts = 1234567890, .text = "usb 1-1: new device", .tgid = 42, .tid = 43});
    ASSERT_EQ(record.size(), KLEAK_PRINTK_HEADER_SIZE + 19u);  // only len text bytes cross the ring
    Event got = stale_event();
    ASSERT_EQ(decode_record(record, 2, got), DecodeStatus::ok);
    EXPECT_EQ(got.kind, EventKind::printk);
    EXPECT_EQ(got.ts_ns, 1234567890u);
    EXPECT_EQ(got.cpu, 2u);
    EXPECT_EQ(got.tgid, 42u);
    EXPECT_EQ(got.tid, 43u);
    EXPECT_EQ(got.bytes_req, 19u);  // the text length
    EXPECT_EQ(got.gfp_flags, 0u);   // the record flags
    EXPECT_EQ(got.ptr, 0u);
    EXPECT_EQ(got.call_site, 0u);
    EXPECT_EQ(got.bytes_alloc, 0u);
    EXPECT_EQ(text_of(record), "usb 1-1: new device");
}

TEST(PrintkDecode, ZeroLengthText) {
    const auto record = printk_record({.ts = 7, .text = ""});
    ASSERT_EQ(record.size(), std::size_t{KLEAK_PRINTK_HEADER_SIZE});
    Event got = stale_event();
    ASSERT_EQ(decode_record(record, 0, got), DecodeStatus::ok);
    EXPECT_EQ(got.bytes_req, 0u);
    const auto text = printk_text(record);
    ASSERT_TRUE(text.has_value());
    EXPECT_TRUE(text->empty());
}

TEST(PrintkDecode, ExactlyTheMaximumLength) {
    std::string text(KLEAK_PRINTK_MAX, 'm');
    text.front() = '<';
    text.back() = '>';
    const auto record = printk_record({.ts = 1, .text = text});
    Event got;
    ASSERT_EQ(decode_record(record, 0, got), DecodeStatus::ok);
    EXPECT_EQ(got.bytes_req, std::uint32_t{KLEAK_PRINTK_MAX});
    EXPECT_EQ(text_of(record), text);
}

TEST(PrintkDecode, TruncatedFlagIsKept) {
    const auto record =
        printk_record({.ts = 1, .text = std::string(KLEAK_PRINTK_MAX, 't'), .flags = KLEAK_PRINTK_TRUNCATED});
    Event got;
    ASSERT_EQ(decode_record(record, 0, got), DecodeStatus::ok);
    EXPECT_EQ(got.gfp_flags & KLEAK_PRINTK_TRUNCATED, std::uint32_t{KLEAK_PRINTK_TRUNCATED});
}

TEST(PrintkDecode, ARecordShorterThanItsLenIsTooShort) {
    auto record = printk_record({.ts = 1, .text = "hello"});
    record.pop_back();  // len says 5, 4 bytes follow
    Event got;
    EXPECT_EQ(decode_record(record, 0, got), DecodeStatus::too_short);
    EXPECT_EQ(printk_text(record), std::nullopt);
}

TEST(PrintkDecode, ARecordShorterThanItsHeaderIsTooShort) {
    const auto full = printk_record({.ts = 1, .text = ""});
    for (std::size_t size = sizeof(kleak_record_header); size < full.size(); ++size) {
        const std::span<const std::byte> cut(full.data(), size);
        Event got;
        EXPECT_EQ(decode_record(cut, 0, got), DecodeStatus::too_short) << size;
        EXPECT_EQ(printk_text(cut), std::nullopt) << size;
    }
}

TEST(PrintkDecode, ALenPastTheMaximumIsTooShortEvenWithTheBytesPresent) {
    // No valid record has len > KLEAK_PRINTK_MAX: the bytes are not trusted.
    const std::string text(KLEAK_PRINTK_MAX + 1, 'x');
    const auto record = printk_record({.ts = 1, .text = text});
    Event got;
    EXPECT_EQ(decode_record(record, 0, got), DecodeStatus::too_short);
    EXPECT_EQ(printk_text(record), std::nullopt);
}

TEST(PrintkDecode, TrailingPaddingIsNotText) {
    auto record = printk_record({.ts = 1, .text = "abc"});
    record.resize(record.size() + 5, std::byte{'Z'});  // e.g. rounded up to 8 bytes
    Event got;
    ASSERT_EQ(decode_record(record, 0, got), DecodeStatus::ok);
    EXPECT_EQ(got.bytes_req, 3u);
    EXPECT_EQ(text_of(record), "abc");
}

TEST(PrintkDecode, TextBytesAreKeptRaw) {
    const std::string raw = "a\0b\x1b[31m\n\t\xff\\"s;
    const auto record = printk_record({.ts = 1, .text = raw});
    Event got;
    ASSERT_EQ(decode_record(record, 0, got), DecodeStatus::ok);
    EXPECT_EQ(got.bytes_req, raw.size());
    EXPECT_EQ(text_of(record), raw);
}

TEST(PrintkDecode, NeedsNoAlignment) {
    const auto record = printk_record({.ts = 99, .text = "odd", .tgid = 5, .tid = 6});
    std::vector<std::byte> shifted(record.size() + 1);
    std::copy(record.begin(), record.end(), shifted.begin() + 1);
    const std::span<const std::byte> unaligned(shifted.data() + 1, record.size());
    Event got;
    ASSERT_EQ(decode_record(unaligned, 0, got), DecodeStatus::ok);
    EXPECT_EQ(std::make_tuple(got.ts_ns, got.tgid, got.tid), std::make_tuple(99u, 5u, 6u));
    EXPECT_EQ(text_of(unaligned), "odd");
}

// --- level prefix ---------------------------------------------------------------------

struct Prefix {
    const char* name;
    std::string text;
    int level;
    std::string rest;
};

void PrintTo(const Prefix& p, std::ostream* os) { *os << p.name; }

class TakeLevelPrefix : public ::testing::TestWithParam<Prefix> {};

TEST_P(TakeLevelPrefix, LevelAndRest) {
    std::string_view text = GetParam().text;
    EXPECT_EQ(take_level_prefix(text), GetParam().level);
    EXPECT_EQ(text, GetParam().rest);
}

INSTANTIATE_TEST_SUITE_P(
    Prefixes, TakeLevelPrefix,
    ::testing::Values(Prefix{"err", "<3>x", 3, "x"}, Prefix{"emerg", "<0>panic", 0, "panic"},
                      Prefix{"debug", "<7>d", 7, "d"}, Prefix{"prefix_only", "<4>", 4, ""},
                      // facility-encoded, as /dev/kmsg accepts: the low three bits are the level
                      Prefix{"user_info", "<14>x", 6, "x"}, Prefix{"local7_debug", "<191>x", 7, "x"},
                      Prefix{"only_one_prefix", "<3><4>x", 3, "<4>x"},
                      // not a prefix: text unchanged
                      Prefix{"empty_number", "<>x", -1, "<>x"}, Prefix{"letter", "<a>x", -1, "<a>x"},
                      Prefix{"unclosed", "<3", -1, "<3"}, Prefix{"unopened", "3>", -1, "3>"},
                      Prefix{"unclosed_then_text", "<3x", -1, "<3x"}, Prefix{"empty", "", -1, ""},
                      Prefix{"leading_space", " <3>x", -1, " <3>x"}, Prefix{"negative", "<-3>x", -1, "<-3>x"},
                      Prefix{"five_digits", "<12345>x", -1, "<12345>x"}),
    [](const auto& test) { return std::string(test.param.name); });

// --- formatting --------------------------------------------------------------------------

PrintkLine line_with(std::uint64_t ts_ns, std::uint16_t cpu, std::string text, bool truncated = false) {
    PrintkLine line;
    line.ts_ns = ts_ns;
    line.cpu = cpu;
    line.text = std::move(text);
    line.truncated = truncated;
    return line;
}

TEST(FormatPrintkLine, DmesgStyleTimestampAndCpu) {
    EXPECT_EQ(format_printk_line(line_with(1000002000, 1, "text")), "[    1.000002] cpu1: text");
    EXPECT_EQ(format_printk_line(line_with(0, 0, "")), "[    0.000000] cpu0: ");
    EXPECT_EQ(format_printk_line(line_with(1999, 3, "x")), "[    0.000001] cpu3: x");  // microseconds, truncated
    EXPECT_EQ(format_printk_line(line_with(123456789012345678, 65535, "x")), "[123456789.012345] cpu65535: x");
}

TEST(FormatPrintkLine, ControlBytesNonAsciiAndBackslashAreEscaped) {
    EXPECT_EQ(format_printk_line(line_with(0, 0, "a\nb\tc\x1b[31md\xff\\e\x7f\0z"s)),
              "[    0.000000] cpu0: a\\x0ab\\x09c\\x1b[31md\\xff\\\\e\\x7f\\x00z");
    // UTF-8 is escaped byte by byte too: the output is plain ASCII.
    EXPECT_EQ(format_printk_line(line_with(0, 0, "caf\xc3\xa9")), "[    0.000000] cpu0: caf\\xc3\\xa9");
    // Printable ASCII passes unchanged.
    EXPECT_EQ(format_printk_line(line_with(0, 0, " ~!\"<3>")), "[    0.000000] cpu0:  ~!\"<3>");
}

TEST(FormatPrintkLine, TruncatedMarker) {
    EXPECT_EQ(format_printk_line(line_with(2000000000, 0, "long message", true)),
              "[    2.000000] cpu0: long message [truncated]");
}

TEST(FormatPrintkLine, NeverContainsANewlineOrEscapeByte) {
    std::string every_byte;
    for (int b = 0; b < 256; ++b) every_byte.push_back(static_cast<char>(b));
    const std::string out = format_printk_line(line_with(0, 0, every_byte, true));
    for (const char c : out) {
        const auto u = static_cast<unsigned char>(c);
        EXPECT_TRUE(u >= 0x20 && u < 0x7f) << "byte 0x" << std::hex << int{u};
    }
}

// --- the in-memory log --------------------------------------------------------------------

PrintkLine at(std::uint64_t ts_ns, int level = -1, std::string text = "m") {
    PrintkLine line = line_with(ts_ns, 0, std::move(text));
    line.level = level;
    return line;
}

std::vector<std::uint64_t> seqs(const std::vector<PrintkLine>& lines) {
    std::vector<std::uint64_t> out;
    for (const PrintkLine& line : lines) out.push_back(line.seq);
    return out;
}

TEST(PrintkLog, SeqStartsAtOneAndIncreases) {
    PrintkLog log(10);
    EXPECT_EQ(log.last_seq(), 0u);
    PrintkLine line = at(5);
    line.seq = 999;  // whatever the caller left there is replaced
    EXPECT_EQ(log.append(line).seq, 1u);
    EXPECT_EQ(log.append(at(6)).seq, 2u);
    EXPECT_EQ(log.append(at(6)).seq, 3u);
    EXPECT_EQ(log.last_seq(), 3u);
    EXPECT_EQ(seqs(log.query({})), (std::vector<std::uint64_t>{1, 2, 3}));
}

TEST(PrintkLog, EvictsTheOldestBeyondCapacityAndCountsThem) {
    PrintkLog log(3);
    for (std::uint64_t ts = 1; ts <= 5; ++ts) log.append(at(ts, -1, "line" + std::to_string(ts)));
    EXPECT_EQ(log.size(), 3u);
    EXPECT_EQ(log.evicted(), 2u);
    const auto lines = log.query({});
    EXPECT_EQ(seqs(lines), (std::vector<std::uint64_t>{3, 4, 5}));
    EXPECT_EQ(lines.front().text, "line3");
}

TEST(PrintkLog, ACapacityOfZeroKeepsOneLine) {
    PrintkLog log(0);
    log.append(at(1));
    log.append(at(2));
    EXPECT_EQ(log.size(), 1u);
    EXPECT_EQ(log.evicted(), 1u);
}

TEST(PrintkLog, ShrinkingEvictsAndGrowingKeeps) {
    PrintkLog log(5);
    for (std::uint64_t ts = 1; ts <= 5; ++ts) log.append(at(ts));
    log.set_capacity(2);
    EXPECT_EQ(seqs(log.query({})), (std::vector<std::uint64_t>{4, 5}));
    EXPECT_EQ(log.evicted(), 3u);
    log.set_capacity(10);
    log.append(at(6));
    EXPECT_EQ(seqs(log.query({})), (std::vector<std::uint64_t>{4, 5, 6}));
}

TEST(PrintkLog, SeqIsNeverReusedAfterClear) {
    PrintkLog log(5);
    log.append(at(1));
    log.append(at(2));
    log.clear();
    EXPECT_EQ(log.size(), 0u);
    EXPECT_EQ(log.append(at(3)).seq, 3u);
    EXPECT_EQ(log.last_seq(), 3u);
}

class PrintkLogQuery : public ::testing::Test {
protected:
    void SetUp() override {
        // seq: 1..6, ts: 100..600, levels: err, info, unknown, debug, warning, emerg
        for (const auto& [ts, level] :
             std::vector<std::pair<std::uint64_t, int>>{{100, 3}, {200, 6}, {300, -1}, {400, 7}, {500, 4}, {600, 0}})
            log_.append(at(ts, level));
    }
    std::vector<std::uint64_t> query(PrintkLog::Query q) const { return seqs(log_.query(q)); }

    PrintkLog log_{100};
};

TEST_F(PrintkLogQuery, AfterSeq) {
    EXPECT_EQ(query({.after_seq = 4}), (std::vector<std::uint64_t>{5, 6}));
    EXPECT_EQ(query({.after_seq = 6}), (std::vector<std::uint64_t>{}));
    EXPECT_EQ(query({.after_seq = 0}), (std::vector<std::uint64_t>{1, 2, 3, 4, 5, 6}));
}

TEST_F(PrintkLogQuery, SinceNsIncludesTheBoundary) {
    EXPECT_EQ(query({.since_ns = 400}), (std::vector<std::uint64_t>{4, 5, 6}));
    EXPECT_EQ(query({.since_ns = 401}), (std::vector<std::uint64_t>{5, 6}));
}

TEST_F(PrintkLogQuery, MaxLevelLetsUnknownLevelsPass) {
    EXPECT_EQ(query({.max_level = 3}), (std::vector<std::uint64_t>{1, 3, 6}));
    EXPECT_EQ(query({.max_level = 0}), (std::vector<std::uint64_t>{3, 6}));
    EXPECT_EQ(query({.max_level = 7}), (std::vector<std::uint64_t>{1, 2, 3, 4, 5, 6}));
}

TEST_F(PrintkLogQuery, LimitKeepsTheNewestMatches) {
    EXPECT_EQ(query({.limit = 2}), (std::vector<std::uint64_t>{5, 6}));
    EXPECT_EQ(query({.limit = 100}), (std::vector<std::uint64_t>{1, 2, 3, 4, 5, 6}));
    // The limit applies after the filters.
    EXPECT_EQ(query({.max_level = 4, .limit = 2}), (std::vector<std::uint64_t>{5, 6}));
    EXPECT_EQ(query({.after_seq = 1, .max_level = 3, .limit = 1}), (std::vector<std::uint64_t>{6}));
    EXPECT_EQ(query({.after_seq = 1, .since_ns = 250, .max_level = 6, .limit = 2}), (std::vector<std::uint64_t>{5, 6}));
}

TEST_F(PrintkLogQuery, MatchesAgreesWithQuery) {
    const PrintkLog::Query q{.after_seq = 2, .since_ns = 300, .max_level = 4};
    std::vector<std::uint64_t> matching;
    for (const PrintkLine& line : log_.query({}))
        if (PrintkLog::matches(line, q)) matching.push_back(line.seq);
    EXPECT_EQ(matching, query(q));
    EXPECT_EQ(matching, (std::vector<std::uint64_t>{3, 5, 6}));
}

// --- through the pipeline ---------------------------------------------------------------------

struct Seen {
    std::uint64_t ts;
    std::uint16_t cpu;
    int level;
    std::string text;
    std::uint64_t allocs_applied;  // tracker allocations at the moment the line came out
    std::uint64_t frees_applied;

    bool operator==(const Seen&) const = default;
};

void PrintTo(const Seen& s, std::ostream* os) {
    *os << "{ts " << s.ts << " cpu" << s.cpu << " <" << s.level << "> '" << s.text << "' allocs " << s.allocs_applied
        << " frees " << s.frees_applied << "}";
}

class PipelinePrintk : public ::testing::Test {
protected:
    void collect() {
        pipeline_.set_printk_sink([this](PrintkLine&& line) {
            const Totals& totals = pipeline_.tracker().totals();
            seen_.push_back({line.ts_ns, line.cpu, line.level, line.text, totals.allocs, totals.frees});
            lines_.push_back(std::move(line));
        });
    }

    Pipeline pipeline_{2};
    std::vector<Seen> seen_;
    std::vector<PrintkLine> lines_;
};

TEST_F(PipelinePrintk, LinesFromTwoCpusComeOutInTimeOrderBetweenAllocations) {
    collect();
    // Ring order is not time order, across rings and within one.
    pipeline_.on_record(1, printk_record({.ts = 25, .text = "<6>b from cpu1"}));
    pipeline_.on_record(1, encode_event(alloc_event({.ts = 15, .ptr = kPtr, .site = kSite, .req = 8, .alloc = 8})));
    pipeline_.on_record(0, printk_record({.ts = 30, .text = "c from cpu0"}));
    pipeline_.on_record(0, printk_record({.ts = 10, .text = "<3>a from cpu0"}));
    pipeline_.on_record(0, encode_event(free_event({.ts = 35, .ptr = kPtr, .site = kSite})));
    EXPECT_EQ(pipeline_.staged(), 5u);
    EXPECT_TRUE(seen_.empty());  // nothing comes out before a watermark passes it

    pipeline_.release_until(20);
    EXPECT_EQ(seen_, (std::vector<Seen>{{10, 0, 3, "a from cpu0", 0, 0}}));

    pipeline_.finish();
    EXPECT_EQ(seen_,
              (std::vector<Seen>{
                  {10, 0, 3, "a from cpu0", 0, 0}, {25, 1, 6, "b from cpu1", 1, 0}, {30, 0, -1, "c from cpu0", 1, 0}}));
    // The allocation records still reached the tracker.
    EXPECT_EQ(pipeline_.tracker().totals().allocs, 1u);
    EXPECT_EQ(pipeline_.tracker().totals().frees, 1u);
    EXPECT_EQ(pipeline_.tracker().outstanding_count(), 0u);
    EXPECT_EQ(pipeline_.records(), 5u);
    EXPECT_EQ(pipeline_.staged(), 0u);
}

TEST_F(PipelinePrintk, EveryFieldReachesTheLine) {
    collect();
    pipeline_.on_record(
        1, printk_record({.ts = 77, .text = "<4>cut\x1b", .flags = KLEAK_PRINTK_TRUNCATED, .tgid = 100, .tid = 101}));
    pipeline_.finish();
    ASSERT_EQ(lines_.size(), 1u);
    const PrintkLine& line = lines_[0];
    EXPECT_EQ(line.seq, 0u);  // assigned by PrintkLog, not here
    EXPECT_EQ(line.ts_ns, 77u);
    EXPECT_EQ(line.cpu, 1u);
    EXPECT_EQ(line.tgid, 100u);
    EXPECT_EQ(line.tid, 101u);
    EXPECT_EQ(line.level, 4);
    EXPECT_TRUE(line.truncated);
    EXPECT_EQ(line.text, "cut\x1b");  // raw: escaping is the formatter's job
}

TEST_F(PipelinePrintk, WithoutASinkPrintkRecordsAreDroppedAndTheTrackerIsUntouched) {
    Pipeline alloc_only(2);
    const auto alloc = encode_event(alloc_event({.ts = 15, .ptr = kPtr, .site = kSite, .req = 8, .alloc = 8}));
    alloc_only.on_record(0, alloc);
    alloc_only.finish();

    pipeline_.on_record(1, printk_record({.ts = 10, .text = "<3>nobody listens"}));
    pipeline_.on_record(0, alloc);
    pipeline_.on_record(1, printk_record({.ts = 20, .text = ""}));
    EXPECT_EQ(pipeline_.staged(), 1u);  // only the allocation
    EXPECT_EQ(pipeline_.newest_ts(1), 0u);
    pipeline_.finish();
    EXPECT_EQ(pipeline_.undecodable(), 0u);
    EXPECT_EQ(test::totals_fields(pipeline_.tracker().totals()), test::totals_fields(alloc_only.tracker().totals()));
    EXPECT_EQ(pipeline_.tracker().sites().size(), 1u);

    // A sink set later sees only what is staged from then on.
    collect();
    pipeline_.on_record(0, printk_record({.ts = 30, .text = "heard"}));
    pipeline_.finish();
    ASSERT_EQ(seen_.size(), 1u);
    EXPECT_EQ(seen_[0].text, "heard");
}

TEST_F(PipelinePrintk, AMalformedPrintkRecordIsCountedNotDelivered) {
    collect();
    auto record = printk_record({.ts = 10, .text = "hello"});
    record.pop_back();
    pipeline_.on_record(0, record);
    pipeline_.finish();
    EXPECT_EQ(pipeline_.undecodable(), 1u);
    EXPECT_EQ(pipeline_.records(), 0u);
    EXPECT_TRUE(seen_.empty());
}

TEST_F(PipelinePrintk, ResetDropsStagedLines) {
    collect();
    pipeline_.on_record(0, printk_record({.ts = 10, .text = "before reset"}));
    pipeline_.on_record(1, printk_record({.ts = 11, .text = "also before"}));
    pipeline_.reset();
    EXPECT_EQ(pipeline_.staged(), 0u);
    pipeline_.finish();
    EXPECT_TRUE(seen_.empty());

    // The pipeline works on after a reset, the sink still attached.
    pipeline_.on_record(1, printk_record({.ts = 5, .text = "after reset"}));
    pipeline_.finish();
    ASSERT_EQ(seen_.size(), 1u);
    EXPECT_EQ(seen_[0].text, "after reset");
}

TEST_F(PipelinePrintk, LinesFeedAPrintkLogInOrder) {
    PrintkLog log(2);
    pipeline_.set_printk_sink([&log](PrintkLine&& line) { log.append(std::move(line)); });
    pipeline_.on_record(1, printk_record({.ts = 30, .text = "third"}));
    pipeline_.on_record(0, printk_record({.ts = 10, .text = "first"}));
    pipeline_.on_record(0, printk_record({.ts = 20, .text = "second"}));
    pipeline_.finish();
    const auto lines = log.query({});
    ASSERT_EQ(lines.size(), 2u);
    EXPECT_EQ(std::make_tuple(lines[0].seq, lines[0].text), std::make_tuple(2u, "second"s));
    EXPECT_EQ(std::make_tuple(lines[1].seq, lines[1].text), std::make_tuple(3u, "third"s));
    EXPECT_EQ(log.evicted(), 1u);
}

}  // namespace
}  // namespace kleak::core
