// The query protocol codec: golden lines for every message, request decoding
// edge cases, durations, the line framing and the client's reply decoding.
//
// Golden files: tests/fixtures/proto/*.jsonl, one message per file, compared
// byte for byte. After an intended wire change, regenerate them with
//   KLEAK_UPDATE_GOLDEN=1 ctest -R Protocol     (or run test_protocol with it set)
// and review the diff in tests/fixtures/proto/ before committing: a changed
// golden is a changed protocol, and PROTOCOL.md must say the same.
#include <gtest/gtest.h>
#include <pthread.h>

#include <array>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "proto/protocol.h"

#ifndef KLEAK_FIXTURES_DIR
#error "KLEAK_FIXTURES_DIR must name tests/fixtures (set by tests/service/CMakeLists.txt)"
#endif

namespace kleak::proto {
namespace {

using nlohmann::json;

constexpr std::array kAllOps{Op::version, Op::stats,  Op::leaks,    Op::report,  Op::snapshot,
                             Op::reset,   Op::printk, Op::suspects, Op::history, Op::caches,
                             Op::stacks,  Op::capture};
constexpr std::array kAllErrorCodes{ErrorCode::parse_error,         ErrorCode::bad_request, ErrorCode::unknown_op,
                                    ErrorCode::unsupported_version, ErrorCode::too_large,   ErrorCode::internal,
                                    ErrorCode::not_permitted,       ErrorCode::lagged,      ErrorCode::not_found,
                                    ErrorCode::forbidden};

// --- golden files ----------------------------------------------------------------------

std::string golden_path(std::string_view name) {
    return std::string(KLEAK_FIXTURES_DIR) + "/proto/" + std::string(name);
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    EXPECT_TRUE(in.good()) << "cannot open " << path;
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

bool updating_goldens() {
    const char* update = std::getenv("KLEAK_UPDATE_GOLDEN");
    return update != nullptr && std::string_view(update) == "1";
}

// Compares `encoded` with the golden file (or rewrites it, see the top of the
// file) and returns the golden's line without its newline, for decoding.
std::string expect_golden_line(std::string_view name, const std::string& encoded) {
    const std::string path = golden_path(name);
    if (updating_goldens()) {
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        out << encoded;
        EXPECT_TRUE(out.good()) << "cannot write golden file " << path;
        std::cout << "[golden] rewrote " << path << "\n";
    }
    const std::string golden = read_file(path);
    EXPECT_EQ(golden, encoded) << "golden file " << path << " differs; rerun with KLEAK_UPDATE_GOLDEN=1 to regenerate";
    EXPECT_TRUE(golden.ends_with('\n')) << path;
    EXPECT_EQ(golden.find('\n'), golden.size() - 1) << path << " must hold exactly one line";
    return golden.substr(0, golden.find('\n'));
}

// --- decoding helpers ------------------------------------------------------------------

Request decode_ok(std::string_view line) {
    const DecodedRequest decoded = decode_request(line);
    EXPECT_FALSE(decoded.error) << line << " -> " << decoded.error->message;
    EXPECT_TRUE(decoded.request) << line;
    return decoded.request.value_or(Request{});
}

// The error for `line`, after checking that no request came with it.
Error decode_error(std::string_view line) {
    const DecodedRequest decoded = decode_request(line);
    EXPECT_FALSE(decoded.request) << line << " was accepted";
    EXPECT_TRUE(decoded.error) << line;
    return decoded.error.value_or(Error{ErrorCode::internal, "no error"});
}

LeaksArgs decode_leaks(const std::string& args) {
    return decode_ok(R"({"v":1,"id":1,"op":"leaks","args":)" + args + "}").leaks;
}

Error decode_leaks_error(const std::string& args) {
    return decode_error(R"({"v":1,"id":1,"op":"leaks","args":)" + args + "}");
}

// --- golden messages: requests -----------------------------------------------------------

struct RequestGolden {
    std::string file;
    Request request;
};

std::vector<RequestGolden> request_goldens() {
    Request leaks{.id = 7, .op = Op::leaks, .leaks = {.top = 5, .min_age_ns = 30'000'000'000, .sort = LeakSort::count}};
    Request leaks_defaults{.id = 8, .op = Op::leaks, .leaks = {}};
    Request stacks{.id = 13, .op = Op::stacks};
    stacks.stacks = {.function = "alloc_pipe_info", .top = 5};
    Request capture{.id = 14, .op = Op::capture};
    capture.capture = {.stacks = "suspects", .functions = {"alloc_pipe_info", "do_inotify_init"}, .sample_shift = 0};
    return {
        {"request_version.jsonl", {.id = 1, .op = Op::version, .leaks = {}}},
        {"request_stats.jsonl", {.id = 2, .op = Op::stats, .leaks = {}}},
        {"request_leaks.jsonl", leaks},
        {"request_leaks_defaults.jsonl", leaks_defaults},
        {"request_report.jsonl", {.id = 3, .op = Op::report, .leaks = {}}},
        {"request_snapshot.jsonl", {.id = 4, .op = Op::snapshot, .leaks = {}}},
        {"request_reset.jsonl", {.id = 5, .op = Op::reset, .leaks = {}}},
        {"request_printk.jsonl",
         {.id = 9,
          .op = Op::printk,
          .leaks = {},
          .printk = {.after_seq = 41, .since_ns = 0, .limit = 100, .level = 4, .follow = true}}},
        {"request_suspects.jsonl", {.id = 10, .op = Op::suspects, .leaks = {}, .printk = {}, .suspects = {.top = 5}}},
        {"request_history.jsonl",
         {.id = 11,
          .op = Op::history,
          .leaks = {},
          .printk = {},
          .suspects = {},
          .history = {.site = "alloc_pipe_info+0xd7", .resolution = 1}}},
        {"request_caches.jsonl",
         {.id = 12, .op = Op::caches, .leaks = {}, .printk = {}, .suspects = {}, .history = {}, .caches = {.top = 10}}},
        {"request_stacks.jsonl", stacks},
        {"request_capture.jsonl", capture},
    };
}

TEST(ProtocolGolden, EveryRequestEncodesToItsGoldenLineAndDecodesBack) {
    for (const RequestGolden& golden : request_goldens()) {
        SCOPED_TRACE(golden.file);
        const std::string line = expect_golden_line(golden.file, encode_request(golden.request));
        EXPECT_EQ(decode_ok(line), golden.request);
    }
}

TEST(ProtocolGolden, EveryOpHasARequestGolden) {
    for (const Op op : kAllOps) {
        const std::string file = "request_" + std::string(op_name(op)) + ".jsonl";
        bool found = false;
        for (const RequestGolden& golden : request_goldens())
            found = found || (golden.file == file && golden.request.op == op);
        EXPECT_TRUE(found) << "no golden " << file;
    }
}

// --- golden messages: results --------------------------------------------------------------
// Samples of the result shapes PROTOCOL.md documents. The codec carries
// results as they are; these pin the envelope and show the contract.

json sample_version() { return {{"kleakd", "0.1.0"}, {"protocol", kProtocolVersion}, {"abi", 1}}; }

json sample_leaks() {
    return {
        {"sort", "bytes"},
        {"min_age_ns", 30'000'000'000ULL},
        {"outstanding", 1020},
        {"outstanding_bytes", 337920},
        {"sites",
         {
             {{"site", "mas_preallocate+0x3ef"},
              {"function", "mas_preallocate"},
              {"outstanding", 920},
              {"outstanding_bytes", 235520},
              {"allocs", 4100},
              {"frees", 2986},
              {"replaced", 194},
              {"oldest_age_ns", 91'000'000'000ULL},
              {"verdict", "untracked-frees"},
              {"cache", "maple_node"}},
             {{"site", "alloc_pipe_info+0xd7"},
              {"function", "alloc_pipe_info"},
              {"outstanding", 100},
              {"outstanding_bytes", 102400},
              {"allocs", 100},
              {"frees", 0},
              {"replaced", 0},
              {"oldest_age_ns", 62'500'000'000ULL},
              {"verdict", "growing"},
              {"cache", "kmalloc-cg-1k"}},
         }},
    };
}

// The samples are built here rather than read from the report fixtures, so
// a change to the report's own format does not move these goldens.
json sample_totals() {
    return {{"allocs", 6},       {"frees", 2},         {"bytes_alloc", 2048},
            {"bytes_req", 1928}, {"bytes_freed", 192}, {"unmatched_frees", 3},
            {"replaced", 1},     {"outstanding", 3},   {"outstanding_bytes", 1600},
            {"dropped", 3},      {"late", 2}};
}

json sample_report() {
    return {
        {"totals", sample_totals()},
        {"sites",
         {{{"site", "foo_init+0x20 [foo]"},
           {"function", "foo_init"},
           {"address", "0xffffffffc0a01020"},
           {"allocs", 2},
           {"frees", 1},
           {"bytes_alloc", 128},
           {"bytes_req", 128},
           {"bytes_freed", 64},
           {"replaced", 0},
           {"outstanding", 1},
           {"outstanding_bytes", 64},
           {"free_calls", 0},
           {"unmatched_frees", 0}}}},
        {"unmatched_frees", {{{"site", "foo_exit+0x8 [foo]"}, {"function", "foo_exit"}, {"count", 2}}}},
        {"losses",
         {{"dropped", 3},
          {"dropped_per_cpu", {0, 3}},
          {"late", 2},
          {"undecodable", 1},
          {"buffer_size", 8388608},
          {"suggested_buffer_size", 33554432}}},
    };
}

json sample_stats() {
    return {
        {"uptime_ns", 3'600'000'000'000ULL},
        {"records", 1'250'000},
        {"records_per_second", 347.2},
        {"outstanding", 3},
        {"outstanding_bytes", 1600},
        {"tracker_bytes", 4096},
        {"dropped", 3},
        {"dropped_per_cpu", {0, 3}},
        {"late", 2},
        {"undecodable", 1},
        {"totals", sample_totals()},
        {"attached", {"kmem:kmalloc", "kmem:kfree", "kmem:kmem_cache_alloc", "kmem:kmem_cache_free"}},
        {"config",
         {{"socket", {{"path", "/run/kleakd/kleakd.sock"}, {"group", "kleakd"}, {"mode", "0660"}}},
          {"snapshots", {{"directory", "/var/lib/kleakd/snapshots"}, {"interval", "60s"}, {"retention", 60}}},
          {"tracing", {{"buffer_size", "8M"}, {"allocators", {"kmalloc", "kmem_cache"}}}},
          {"log_level", "info"}}},
        {"clients", 1},
        {"suggested_buffer_size", 33554432},
        {"queries", {{"requests", 12}, {"errors", 1}, {"refused", 0}, {"dropped_slow", 0}}},
        {"caches",
         {{"named", 41}, {"unnamed", 0}, {"slabinfo_reads", 360}, {"slabinfo_errors", 0}, {"last_error", ""}}},
    };
}

// A snapshot document (proto/snapshot.schema.json): the report's keys plus
// where and when it was taken. The codec carries it without looking inside.
json sample_snapshot() {
    json doc = {
        {"schema_version", 1},
        {"kleakd_version", "0.1.0"},
        {"host", "vm"},
        {"kernel_release", "6.18.44"},
        {"boot_id", "2d80042b-d452-4acb-b04a-197478e0d9e1"},
        {"time", "2026-11-26T10:35:21.123Z"},
        {"unix_time_ms", 1795689321123LL},
        {"monotonic_ns", 539589671187ULL},
        {"uptime_ns", 3'600'000'000'000ULL},
    };
    doc.update(sample_report());
    return doc;
}

struct ResultGolden {
    std::string file;
    std::uint64_t id;
    json result;
};

json sample_printk() {
    return {
        {"lines",
         {{{"seq", 42},
           {"ts_ns", 2950610943000ULL},
           {"cpu", 0},
           {"pid", 14790},
           {"tid", 14790},
           {"level", 5},
           {"truncated", false},
           {"text", "kleak-probe hello"}}}},
        {"last_seq", 42},
        {"evicted", 0},
    };
}

json sample_judgement(const char* verdict, const char* reason, double growth, double growth_bytes) {
    return {{"verdict", verdict},
            {"reasons", {reason}},
            {"growth_per_hour", growth},
            {"growth_bytes_per_hour", growth_bytes},
            {"history_ns", 900'000'000'000ULL}};
}

json sample_suspects() {
    json row = {{"site", "alloc_pipe_info+0xd7"},     {"function", "alloc_pipe_info"},
                {"cache", "kmalloc-cg-1k"},           {"outstanding", 1800},
                {"outstanding_bytes", 1843200},
                {"age_p50_ns", 450'000'000'000ULL},   {"age_p90_ns", 810'000'000'000ULL},
                {"oldest_age_ns", 900'000'000'000ULL}};
    row.update(sample_judgement("growing",
                                "growing: trend +7200/h over 15m, 100% of its changes rise, new high within 1m",
                                7200.0, 7372800.0));
    return {{"growing", 1},
            {"sites", 64},
            {"samples", 90},
            {"rules",
             {{"interval_ns", 10'000'000'000ULL},
              {"window_ns", 900'000'000'000ULL},
              {"recent_ns", 60'000'000'000ULL},
              {"min_rise", 4.0},
              {"min_rising_share", 0.8}}},
            {"suspects", {row}},
            {"rest",
             {{"sites", 63},
              {"outstanding", 2400},
              {"outstanding_bytes", 512000},
              {"growth_per_hour", 36.0},
              {"growth_bytes_per_hour", 7200.0}}}};
}

json sample_history() {
    json h = {{"site", "alloc_pipe_info+0xd7"},
              {"function", "alloc_pipe_info"},
              {"interval_ns", 60'000'000'000ULL},
              {"outstanding", 1800},
              {"outstanding_bytes", 1843200},
              {"points",
               {{{"t_ns", 3000'000'000'000ULL}, {"outstanding", 1740}, {"bytes", 1781760}},
                {{"t_ns", 3060'000'000'000ULL}, {"outstanding", 1800}, {"bytes", 1843200}}}}};
    h.update(sample_judgement("growing", "growing: trend +3600/h over 15m, 100% of its changes rise, new high within 1m",
                              3600.0, 3686400.0));
    return h;
}

// As PROTOCOL.md shows it: the maple tree's nodes, whose bulk and RCU frees
// kleakd does not see, and a cache it sees whole.
json sample_caches() {
    return {{"slabinfo", true},
            {"caches_total", 37},
            {"caches_with_excess", 1},
            {"caches",
             {{{"cache", "maple_node"},
               {"live", 1002},
               {"live_bytes", 256512},
               {"kernel_active", 667},
               {"kernel_total", 1072},
               {"coverage", 1.5},
               {"excess", 335},
               {"reclaimable", false},
               {"sites", 8}},
              {{"cache", "kmalloc-large"},
               {"live", 3},
               {"live_bytes", 49152},
               {"kernel_active", nullptr},
               {"kernel_total", nullptr},
               {"coverage", nullptr},
               {"excess", 0},
               {"reclaimable", false},
               {"sites", 2}}}}};
}

std::vector<ResultGolden> result_goldens() {
    return {
        {"result_version.jsonl", 1, sample_version()},   {"result_stats.jsonl", 2, sample_stats()},
        {"result_leaks.jsonl", 7, sample_leaks()},       {"result_report.jsonl", 3, sample_report()},
        {"result_snapshot.jsonl", 4, sample_snapshot()}, {"result_reset.jsonl", 5, {{"reset", true}}},
        {"result_printk.jsonl", 9, sample_printk()},     {"result_suspects.jsonl", 10, sample_suspects()},
        {"result_history.jsonl", 11, sample_history()},   {"result_caches.jsonl", 12, sample_caches()},
    };
}

TEST(ProtocolGolden, EveryResultEncodesToItsGoldenLineAndDecodesBack) {
    for (const ResultGolden& golden : result_goldens()) {
        SCOPED_TRACE(golden.file);
        const std::string line = expect_golden_line(golden.file, encode_result(golden.id, golden.result));
        std::string why_not;
        const auto response = decode_response(line, why_not);
        ASSERT_TRUE(response) << why_not;
        EXPECT_TRUE(response->ok);
        EXPECT_EQ(response->id, golden.id);
        EXPECT_EQ(response->result, golden.result);
        EXPECT_FALSE(response->error);
    }
}

TEST(ProtocolGolden, EnvelopeKeysComeInTheDocumentedOrder) {
    const std::string line = encode_result(1, sample_version());
    EXPECT_TRUE(line.starts_with(R"({"v":1,"id":1,"ok":true,"result":)")) << line;
    EXPECT_EQ(encode_request({.id = 9, .op = Op::stats, .leaks = {}}), "{\"v\":1,\"id\":9,\"op\":\"stats\"}\n");
}

// --- golden messages: errors ---------------------------------------------------------------
// The codec's own errors come from decoding a bad line, as the daemon would
// reply to it; the others carry the wording the daemon is expected to use.

struct ErrorGolden {
    std::string file;
    std::optional<std::uint64_t> id;
    Error error;
};

ErrorGolden from_bad_line(std::string file, std::string_view line) {
    const DecodedRequest decoded = decode_request(line);
    EXPECT_TRUE(decoded.error) << line;
    return {std::move(file), decoded.id, decoded.error.value_or(Error{ErrorCode::internal, ""})};
}

std::vector<ErrorGolden> error_goldens() {
    return {
        from_bad_line("error_parse_error.jsonl", R"({"v":1,"id":3,"op":)"),
        from_bad_line("error_bad_request.jsonl", R"({"v":1,"id":11,"op":"leaks","args":{"top":0}})"),
        from_bad_line("error_unknown_op.jsonl", R"({"v":1,"id":12,"op":"leak"})"),
        from_bad_line("error_unsupported_version.jsonl", R"({"v":2,"id":13,"op":"version"})"),
        {"error_too_large.jsonl", std::nullopt, line_too_large_error()},
        {"error_internal.jsonl", 14, Error{ErrorCode::internal, "cannot write snapshot: No space left on device"}},
        {"error_not_permitted.jsonl", std::nullopt,
         Error{ErrorCode::not_permitted, "uid 1000 may not query kleakd; allowed: root and group kleakd"}},
        {"error_lagged.jsonl", 9,
         Error{ErrorCode::lagged, "printk follower fell 4194304 bytes behind; dropped (reconnect with after_seq)"}},
        {"error_not_found.jsonl", 11,
         Error{ErrorCode::not_found,
               "no call site nosuch has allocated since start-up or the last reset (give it as reports print it, "
               "e.g. alloc_pipe_info+0x2d, as a function name, or as 0x...)"}},
        {"error_forbidden.jsonl", 15,
         Error{ErrorCode::forbidden,
               "op \"reset\" changes the daemon's state: only root and members of group kleakd-admin "
               "(socket.admin_group) may send it; uid 1000 is neither"}},
    };
}

TEST(ProtocolGolden, EveryErrorEncodesToItsGoldenLineAndDecodesBack) {
    for (const ErrorGolden& golden : error_goldens()) {
        SCOPED_TRACE(golden.file);
        const std::string line = expect_golden_line(golden.file, encode_error(golden.id, golden.error));
        std::string why_not;
        const auto response = decode_response(line, why_not);
        ASSERT_TRUE(response) << why_not;
        EXPECT_FALSE(response->ok);
        EXPECT_EQ(response->id, golden.id);
        EXPECT_EQ(response->error, golden.error);
    }
}

TEST(ProtocolGolden, EveryErrorCodeHasAGolden) {
    const auto goldens = error_goldens();
    for (const ErrorCode code : kAllErrorCodes) {
        const std::string file = "error_" + std::string(error_code_name(code)) + ".jsonl";
        bool found = false;
        for (const ErrorGolden& golden : goldens) found = found || (golden.file == file && golden.error.code == code);
        EXPECT_TRUE(found) << "no golden " << file << " with code " << error_code_name(code);
    }
}

// --- names -----------------------------------------------------------------------------------

TEST(ProtocolNames, RoundTripAndRejectUnknown) {
    for (const Op op : kAllOps) {
        EXPECT_EQ(op_from_name(op_name(op)), op);
    }
    for (const ErrorCode code : kAllErrorCodes) {
        EXPECT_EQ(error_code_from_name(error_code_name(code)), code);
    }
    EXPECT_EQ(leak_sort_name(LeakSort::bytes), "bytes");
    EXPECT_EQ(leak_sort_name(LeakSort::count), "count");
    EXPECT_FALSE(op_from_name("Version"));
    EXPECT_FALSE(op_from_name(""));
    EXPECT_FALSE(error_code_from_name("oops"));
}

TEST(ProtocolOps, OnlyResetAndCaptureChangeState) {
    for (const Op op : kAllOps)
        EXPECT_EQ(op_changes_state(op), op == Op::reset || op == Op::capture) << op_name(op);
}

TEST(ProtocolDecode, LeaksByIsSiteCommOrCgroup) {
    const Request by_comm = decode_ok(R"({"v":1,"id":1,"op":"leaks","args":{"by":"comm"}})");
    EXPECT_EQ(by_comm.leaks.by, "comm");
    EXPECT_EQ(decode_ok(encode_request(by_comm)), by_comm);
    EXPECT_EQ(decode_error(R"({"v":1,"id":1,"op":"leaks","args":{"by":"pid"}})").message,
              "\"args.by\" must be \"site\", \"comm\" or \"cgroup\", got \"pid\"");
}

TEST(ProtocolDecode, CaptureArgsAreChecked) {
    EXPECT_EQ(decode_error(R"({"v":1,"id":1,"op":"capture","args":{"stacks":"some"}})").message,
              "\"args.stacks\" must be \"suspects\", \"all\" or \"off\", got \"some\"");
    EXPECT_EQ(decode_error(R"({"v":1,"id":1,"op":"capture","args":{"functions":[""]}})").code, ErrorCode::bad_request);
    EXPECT_EQ(decode_error(R"({"v":1,"id":1,"op":"capture","args":{"sample_shift":33}})").code, ErrorCode::bad_request);
    EXPECT_EQ(decode_error(R"({"v":1,"id":1,"op":"stacks","args":{"weight":"bytes"}})").message,
              "unknown arg \"args.weight\"; op \"stacks\" takes function, top");
}

// --- decoding requests: envelope -------------------------------------------------------------

TEST(ProtocolDecode, MalformedJsonIsAParseErrorWithoutId) {
    for (const std::string_view line :
         {R"({"v":1,"id":3,"op":)", "{", "not json", "", R"({"v":1,"id":3} trailing)", R"({'v':1})"}) {
        SCOPED_TRACE(line);
        const DecodedRequest decoded = decode_request(line);
        ASSERT_TRUE(decoded.error);
        EXPECT_EQ(decoded.error->code, ErrorCode::parse_error);
        EXPECT_TRUE(decoded.error->message.starts_with("not JSON: ")) << decoded.error->message;
        EXPECT_NE(decoded.error->message.find(" at byte "), std::string::npos) << decoded.error->message;
        EXPECT_FALSE(decoded.id);
        EXPECT_FALSE(decoded.request);
    }
}

TEST(ProtocolDecode, NumberBeyondADoubleIsAParseErrorNotAnException) {
    // Regression (fuzz_protocol): nlohmann throws out_of_range for these,
    // which escaped decode_request.
    for (const std::string_view line : {R"({"v":1e999,"id":1,"op":"version"})",
                                        R"({"v":1,"id":1,"op":"leaks","args":{"top":-1.1E111111111111111}})"}) {
        SCOPED_TRACE(line);
        const DecodedRequest decoded = decode_request(line);
        ASSERT_TRUE(decoded.error);
        EXPECT_EQ(decoded.error->code, ErrorCode::parse_error);
        EXPECT_EQ(decoded.error->message, "not JSON kleakd can read: a number is out of range (beyond 1.8e308)");
    }
    std::string why_not;
    EXPECT_FALSE(decode_response(R"({"v":1,"id":1,"ok":true,"result":1e999})", why_not));
    EXPECT_NE(why_not.find("out of range"), std::string::npos) << why_not;
}

TEST(ProtocolDecode, InvalidUtf8IsAParseError) {
    EXPECT_EQ(decode_error("{\"v\":1,\"id\":1,\"op\":\"st\xff\"}").code, ErrorCode::parse_error);
}

TEST(ProtocolDecode, JsonThatIsNotAnObjectIsABadRequest) {
    for (const std::string_view line : {"[1,2]", R"("version")", "3", "null", "true"}) {
        SCOPED_TRACE(line);
        const DecodedRequest decoded = decode_request(line);
        ASSERT_TRUE(decoded.error);
        EXPECT_EQ(decoded.error->code, ErrorCode::bad_request);
        EXPECT_NE(decoded.error->message.find("must be a JSON object"), std::string::npos) << decoded.error->message;
        EXPECT_FALSE(decoded.id);
    }
}

TEST(ProtocolDecode, DeeplyNestedInputIsRejectedWithoutCrashing) {
    const std::string deep = std::string(30000, '[') + std::string(30000, ']');
    EXPECT_EQ(decode_error(deep).code, ErrorCode::bad_request);
}

// Runs `body` on a thread with a 256 KiB stack (the daemon's threads have
// 8 MiB; a whole dump of the value below needed megabytes).
template <class Body>
void on_small_stack(Body body) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    pthread_t thread;
    auto run = [](void* arg) -> void* {
        (*static_cast<Body*>(arg))();
        return nullptr;
    };
    ASSERT_EQ(pthread_create(&thread, &attr, run, &body), 0);
    pthread_join(thread, nullptr);
    pthread_attr_destroy(&attr);
}

TEST(ProtocolDecode, DeepValueInsideARequestIsRefusedOnASmallStack) {
    // Regression: the message quoting "v" dumped the whole nested value
    // recursively. Now the line is refused for its depth before parsing.
    const std::string deep = std::string(32000, '[') + std::string(32000, ']');
    for (const std::string& line : {R"({"v":)" + deep + R"(,"id":1,"op":"version"})",
                                    R"({"v":1,"id":1,"op":"leaks","args":{"top":)" + deep + "}}"}) {
        Error error{ErrorCode::internal, ""};
        on_small_stack([&] { error = decode_request(line).error.value_or(error); });
        EXPECT_EQ(error.code, ErrorCode::bad_request);
        EXPECT_EQ(error.message, "arrays and objects nest more than 16 levels deep; a request needs 2");
    }
}

TEST(ProtocolDecode, DepthIsCountedOutsideStringsOnly) {
    const std::string brackets(1000, '[');
    EXPECT_EQ(decode_ok(R"({"v":1,"id":1,"op":"history","args":{"site":")" + brackets + "\"}}").history.site, brackets);
    // An escaped quote does not end the string.
    const std::string site = "a\\\"" + brackets;
    EXPECT_EQ(decode_ok(R"({"v":1,"id":1,"op":"history","args":{"site":")" + site + "\"}}").history.site,
              "a\"" + brackets);
    // 16 levels are still parsed (and quoted), 17 are not.
    const auto nested = [](int levels) { return std::string(levels, '[') + std::string(levels, ']'); };
    EXPECT_EQ(decode_error(R"({"v":1,"id":1,"op":"leaks","args":{"top":)" + nested(14) + "}}").message,
              R"("args.top" must be an integer in 1..100000, got [[[[[...]]]]])");
    EXPECT_EQ(decode_error(R"({"v":1,"id":1,"op":"leaks","args":{"top":)" + nested(15) + "}}").message,
              "arrays and objects nest more than 16 levels deep; a request needs 2");
}

TEST(ProtocolDecode, QuotedValuesAreCutShort) {
    // A long array is quoted by its first 40 characters, as dump() would write them.
    std::string many = "[";
    for (int i = 0; i < 5000; ++i) many += std::to_string(i) + ",";
    many.back() = ']';
    EXPECT_EQ(decode_leaks_error(R"({"top":)" + many + "}").message,
              R"("args.top" must be an integer in 1..100000, got [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,1...)");
    EXPECT_EQ(decode_leaks_error(R"({"top":{"a":[1,{"b":null}],"c":"d"}})").message,
              R"("args.top" must be an integer in 1..100000, got {"a":[1,{"b":null}],"c":"d"})");
}

TEST(ProtocolDecode, MissingOrOtherVersionIsUnsupportedAndEchoesTheId) {
    for (const std::string_view line : {R"({"id":42,"op":"version"})", R"({"v":2,"id":42,"op":"version"})",
                                        R"({"v":0,"id":42,"op":"version"})", R"({"v":-1,"id":42,"op":"version"})"}) {
        SCOPED_TRACE(line);
        const DecodedRequest decoded = decode_request(line);
        ASSERT_TRUE(decoded.error);
        EXPECT_EQ(decoded.error->code, ErrorCode::unsupported_version);
        EXPECT_NE(decoded.error->message.find("speaks protocol version 1"), std::string::npos)
            << decoded.error->message;
        EXPECT_EQ(decoded.id, 42u);
    }
    EXPECT_NE(decode_error(R"({"v":2,"id":42,"op":"version"})").message.find("version 2 is not supported"),
              std::string::npos);
}

TEST(ProtocolDecode, VersionIsCheckedBeforeTheRestOfTheRequest) {
    // A version-2 request may be shaped differently; the useful answer is the version.
    const DecodedRequest decoded = decode_request(R"({"v":2,"ident":"abc","operation":"x"})");
    ASSERT_TRUE(decoded.error);
    EXPECT_EQ(decoded.error->code, ErrorCode::unsupported_version);
    EXPECT_FALSE(decoded.id);
}

TEST(ProtocolDecode, VersionOfTheWrongTypeIsABadRequestNamingV) {
    for (const std::string_view line : {R"({"v":"1","id":1,"op":"version"})", R"({"v":1.0,"id":1,"op":"version"})",
                                        R"({"v":null,"id":1,"op":"version"})"}) {
        SCOPED_TRACE(line);
        const Error error = decode_error(line);
        EXPECT_EQ(error.code, ErrorCode::bad_request);
        EXPECT_TRUE(error.message.starts_with("\"v\" must be an integer")) << error.message;
    }
}

TEST(ProtocolDecode, MissingIdIsABadRequest) {
    const DecodedRequest decoded = decode_request(R"({"v":1,"op":"version"})");
    ASSERT_TRUE(decoded.error);
    EXPECT_EQ(decoded.error->code, ErrorCode::bad_request);
    EXPECT_EQ(decoded.error->message, "missing \"id\"");
    EXPECT_FALSE(decoded.id);
}

TEST(ProtocolDecode, IdThatIsNotAnUnsigned64BitIntegerIsABadRequestNamingId) {
    for (const std::string_view line : {R"({"v":1,"id":-1,"op":"version"})", R"({"v":1,"id":1.5,"op":"version"})",
                                        R"({"v":1,"id":"7","op":"version"})", R"({"v":1,"id":null,"op":"version"})",
                                        R"({"v":1,"id":18446744073709551616,"op":"version"})"}) {
        SCOPED_TRACE(line);
        const DecodedRequest decoded = decode_request(line);
        ASSERT_TRUE(decoded.error);
        EXPECT_EQ(decoded.error->code, ErrorCode::bad_request);
        EXPECT_TRUE(decoded.error->message.starts_with("\"id\" must be an unsigned 64-bit integer"))
            << decoded.error->message;
        EXPECT_FALSE(decoded.id);
    }
}

TEST(ProtocolDecode, IdSpansTheWholeUnsigned64BitRange) {
    EXPECT_EQ(decode_ok(R"({"v":1,"id":0,"op":"version"})").id, 0u);
    EXPECT_EQ(decode_ok(R"({"v":1,"id":18446744073709551615,"op":"version"})").id, 18446744073709551615u);
}

TEST(ProtocolDecode, UnknownTopLevelFieldIsABadRequestNamingIt) {
    const DecodedRequest decoded = decode_request(R"({"v":1,"id":5,"op":"leaks","arg":{"top":5}})");
    ASSERT_TRUE(decoded.error);
    EXPECT_EQ(decoded.error->code, ErrorCode::bad_request);
    EXPECT_NE(decoded.error->message.find("unknown field \"arg\""), std::string::npos) << decoded.error->message;
    EXPECT_EQ(decoded.id, 5u);
}

TEST(ProtocolDecode, MissingOrMistypedOpIsABadRequestNamingOp) {
    EXPECT_EQ(decode_error(R"({"v":1,"id":1})").message, "missing \"op\"");
    const Error mistyped = decode_error(R"({"v":1,"id":1,"op":3})");
    EXPECT_EQ(mistyped.code, ErrorCode::bad_request);
    EXPECT_EQ(mistyped.message, "\"op\" must be a string, got 3");
}

TEST(ProtocolDecode, UnknownOpListsTheKnownOpsAndEchoesTheId) {
    const DecodedRequest decoded = decode_request(R"({"v":1,"id":12,"op":"leak"})");
    ASSERT_TRUE(decoded.error);
    EXPECT_EQ(decoded.error->code, ErrorCode::unknown_op);
    EXPECT_EQ(decoded.error->message,
              "unknown op \"leak\"; known ops: version, stats, leaks, report, snapshot, reset, printk, suspects, "
              "history, caches, stacks, capture");
    EXPECT_EQ(decoded.id, 12u);
}

TEST(ProtocolDecode, SuspectsAndHistoryArgsAreCheckedByName) {
    EXPECT_EQ(decode_ok(R"({"v":1,"id":1,"op":"suspects"})").suspects.top, 20u);
    EXPECT_EQ(decode_error(R"({"v":1,"id":1,"op":"suspects","args":{"top":0}})").message,
              "\"args.top\" must be an integer in 1..100000, got 0");
    EXPECT_EQ(decode_error(R"({"v":1,"id":1,"op":"suspects","args":{"sort":"bytes"}})").message,
              "unknown arg \"args.sort\"; op \"suspects\" takes top, family");
    const Request h = decode_ok(R"({"v":1,"id":1,"op":"history","args":{"site":"kfree_skb"}})");
    EXPECT_EQ(h.history.site, "kfree_skb");
    EXPECT_EQ(h.history.resolution, 0u);
    EXPECT_EQ(decode_error(R"({"v":1,"id":1,"op":"history"})").message, "op \"history\" needs \"args.site\"");
    EXPECT_EQ(decode_error(R"({"v":1,"id":1,"op":"history","args":{}})").message, "op \"history\" needs \"args.site\"");
    EXPECT_EQ(decode_error(R"({"v":1,"id":1,"op":"history","args":{"site":""}})").code, ErrorCode::bad_request);
    EXPECT_EQ(decode_error(R"({"v":1,"id":1,"op":"history","args":{"site":"x","resolution":4}})").message,
              "\"args.resolution\" must be an integer in 0..3, got 4");
    EXPECT_EQ(decode_error(R"({"v":1,"id":1,"op":"history","args":{"site":"x","tier":1}})").message,
              "unknown arg \"args.tier\"; op \"history\" takes site, resolution");
}

TEST(ProtocolDecode, CachesTakesTopFromZeroMeaningAll) {
    // Absent or empty args: every cache.
    EXPECT_EQ(decode_ok(R"({"v":1,"id":1,"op":"caches"})").caches, CachesArgs{});
    EXPECT_EQ(decode_ok(R"({"v":1,"id":1,"op":"caches"})").caches.top, 0u);
    EXPECT_EQ(decode_ok(R"({"v":1,"id":1,"op":"caches","args":{}})").caches.top, 0u);
    EXPECT_EQ(decode_ok(R"({"v":1,"id":1,"op":"caches","args":{"top":0}})").caches.top, 0u);
    EXPECT_EQ(decode_ok(R"({"v":1,"id":1,"op":"caches","args":{"top":1}})").caches.top, 1u);
    EXPECT_EQ(decode_ok(R"({"v":1,"id":1,"op":"caches","args":{"top":100000}})").caches.top, 100000u);
    // Other ops' args stay at their defaults.
    const Request r = decode_ok(R"({"v":1,"id":1,"op":"caches","args":{"top":7}})");
    EXPECT_EQ(r.op, Op::caches);
    EXPECT_EQ(r.leaks, LeaksArgs{});
    EXPECT_EQ(r.suspects, SuspectsArgs{});
}

TEST(ProtocolDecode, CachesTopOutOfRangeOrMistypedIsABadRequestNamingIt) {
    for (const std::string_view top : {"100001", "-1", "1.5", "\"5\"", "true", "null", "[]", "18446744073709551616"}) {
        SCOPED_TRACE(top);
        const Error error = decode_error(R"({"v":1,"id":1,"op":"caches","args":{"top":)" + std::string(top) + "}}");
        EXPECT_EQ(error.code, ErrorCode::bad_request);
        EXPECT_TRUE(error.message.starts_with("\"args.top\" must be an integer in 0..100000 (0: all), got "))
            << error.message;
    }
    EXPECT_EQ(decode_error(R"({"v":1,"id":1,"op":"caches","args":{"top":100001}})").message,
              "\"args.top\" must be an integer in 0..100000 (0: all), got 100001");
}

TEST(ProtocolDecode, CachesUnknownArgIsABadRequestNamingIt) {
    const Error error = decode_error(R"({"v":1,"id":4,"op":"caches","args":{"sort":"live"}})");
    EXPECT_EQ(error.code, ErrorCode::bad_request);
    EXPECT_EQ(error.message, "unknown arg \"args.sort\"; op \"caches\" takes top");
    EXPECT_EQ(decode_error(R"({"v":1,"id":4,"op":"caches","args":{"top":5,"min_age":"1s"}})").message,
              "unknown arg \"args.min_age\"; op \"caches\" takes top");
    EXPECT_EQ(decode_error(R"({"v":1,"id":4,"op":"caches","args":5})").code, ErrorCode::bad_request);
}

TEST(ProtocolEncode, CachesRequestsAlwaysCarryTheirTop) {
    for (const std::uint32_t top : {0u, 1u, 100000u}) {
        const Request request{.id = 3,
                              .op = Op::caches,
                              .leaks = {},
                              .printk = {},
                              .suspects = {},
                              .history = {},
                              .caches = {.top = top}};
        const std::string line = encode_request(request);
        EXPECT_EQ(line, "{\"v\":1,\"id\":3,\"op\":\"caches\",\"args\":{\"top\":" + std::to_string(top) + "}}\n");
        EXPECT_EQ(decode_ok(line.substr(0, line.size() - 1)), request);
    }
}

TEST(ProtocolDecode, EchoedValuesInMessagesAreBounded) {
    const std::string huge_op(10000, 'x');
    const Error error = decode_error(R"({"v":1,"id":1,"op":")" + huge_op + "\"}");
    EXPECT_EQ(error.code, ErrorCode::unknown_op);
    EXPECT_LT(error.message.size(), 200u) << error.message;
}

TEST(ProtocolDecode, EveryNoArgOpDecodesWithoutArgsOrWithEmptyArgs) {
    for (const Op op : kAllOps) {
        if (op == Op::leaks || op == Op::history) continue;  // history needs a site (tested above)
        const std::string name(op_name(op));
        EXPECT_EQ(decode_ok(R"({"v":1,"id":1,"op":")" + name + "\"}").op, op);
        EXPECT_EQ(decode_ok(R"({"v":1,"id":1,"op":")" + name + R"(","args":{}})").op, op);
    }
}

TEST(ProtocolDecode, ArgsOnAnOpWithoutArgsAreABadRequest) {
    for (const Op op : kAllOps) {
        if (op == Op::leaks || op == Op::printk || op == Op::suspects || op == Op::history || op == Op::caches ||
            op == Op::stacks || op == Op::capture)
            continue;
        const std::string name(op_name(op));
        const Error error = decode_error(R"({"v":1,"id":1,"op":")" + name + R"(","args":{"top":5}})");
        EXPECT_EQ(error.code, ErrorCode::bad_request);
        EXPECT_EQ(error.message, "op \"" + name + "\" takes no args, got \"args.top\"");
    }
}

TEST(ProtocolDecode, ArgsThatAreNotAnObjectAreABadRequestNamingArgs) {
    for (const std::string_view args : {"[]", "5", "null", R"("top=5")"}) {
        SCOPED_TRACE(args);
        const Error error = decode_error(R"({"v":1,"id":1,"op":"leaks","args":)" + std::string(args) + "}");
        EXPECT_EQ(error.code, ErrorCode::bad_request);
        EXPECT_TRUE(error.message.starts_with("\"args\" must be an object")) << error.message;
    }
}

// --- decoding requests: leaks args -----------------------------------------------------------

TEST(ProtocolLeaksArgs, AbsentArgsTakeTheDefaults) {
    EXPECT_EQ(decode_ok(R"({"v":1,"id":1,"op":"leaks"})").leaks, LeaksArgs{});
    const LeaksArgs defaults = decode_leaks("{}");
    EXPECT_EQ(defaults.top, 20u);
    EXPECT_EQ(defaults.min_age_ns, 0u);
    EXPECT_EQ(defaults.sort, LeakSort::bytes);
    EXPECT_EQ(decode_leaks(R"({"sort":"count"})"), (LeaksArgs{.top = 20, .min_age_ns = 0, .sort = LeakSort::count}));
}

TEST(ProtocolLeaksArgs, TopAcceptsOneToOneHundredThousand) {
    EXPECT_EQ(decode_leaks(R"({"top":1})").top, 1u);
    EXPECT_EQ(decode_leaks(R"({"top":100000})").top, 100000u);
    for (const std::string_view top : {"0", "100001", "-5", "4294967297"}) {
        SCOPED_TRACE(top);
        const Error error = decode_leaks_error(R"({"top":)" + std::string(top) + "}");
        EXPECT_EQ(error.code, ErrorCode::bad_request);
        EXPECT_EQ(error.message, "\"args.top\" must be an integer in 1..100000, got " + std::string(top));
    }
}

TEST(ProtocolLeaksArgs, WrongTypesAreABadRequestNamingTheArg) {
    const std::vector<std::pair<std::string, std::string>> cases{
        {R"({"top":"5"})", "\"args.top\""},          {R"({"top":5.0})", "\"args.top\""},
        {R"({"top":true})", "\"args.top\""},         {R"({"top":null})", "\"args.top\""},
        {R"({"sort":1})", "\"args.sort\""},          {R"({"sort":"size"})", "\"args.sort\""},
        {R"({"sort":"Bytes"})", "\"args.sort\""},    {R"({"min_age":true})", "\"args.min_age\""},
        {R"({"min_age":null})", "\"args.min_age\""}, {R"({"min_age":[3]})", "\"args.min_age\""},
    };
    for (const auto& [args, field] : cases) {
        SCOPED_TRACE(args);
        const Error error = decode_leaks_error(args);
        EXPECT_EQ(error.code, ErrorCode::bad_request);
        EXPECT_TRUE(error.message.starts_with(field)) << error.message;
    }
    EXPECT_EQ(decode_leaks_error(R"({"sort":"size"})").message,
              R"("args.sort" must be one of bytes, count, got "size")");
}

TEST(ProtocolLeaksArgs, UnknownArgIsABadRequestNamingIt) {
    const Error error = decode_leaks_error(R"({"top":5,"limit":3})");
    EXPECT_EQ(error.code, ErrorCode::bad_request);
    EXPECT_EQ(error.message, "unknown arg \"args.limit\"; op \"leaks\" takes top, min_age, sort, family, by");
}

TEST(ProtocolLeaksArgs, FamilyNamesOneAllocatorFamily) {
    for (const char* family : {"slab", "page", "percpu", "vmalloc"})
        EXPECT_EQ(decode_leaks(std::string(R"({"family":")") + family + "\"}").family, family);
    EXPECT_EQ(decode_leaks("{}").family, "");
    EXPECT_EQ(decode_leaks_error(R"({"family":"pages"})").message,
              R"("args.family" must be one of "slab", "page", "percpu", "vmalloc", got "pages")");
    EXPECT_EQ(decode_leaks_error(R"({"family":1})").code, ErrorCode::bad_request);
    EXPECT_EQ(decode_ok(R"({"v":1,"id":1,"op":"suspects","args":{"family":"percpu"}})").suspects.family, "percpu");
    // Sent only when set, so a request without it means the same to an older daemon.
    Request request;
    request.op = Op::leaks;
    EXPECT_EQ(encode_request(request).find("family"), std::string::npos);
    request.leaks.family = "page";
    EXPECT_NE(encode_request(request).find(R"("family":"page")"), std::string::npos) << encode_request(request);
}

TEST(ProtocolLeaksArgs, MinAgeAcceptsSecondsAndUnitStrings) {
    const std::vector<std::pair<std::string, std::uint64_t>> cases{
        {"3", 3'000'000'000},
        {"0", 0},
        {"0.5", 500'000'000},
        {"1.25", 1'250'000'000},
        {R"("500ms")", 500'000'000},
        {R"("30s")", 30'000'000'000},
        {R"("5m")", 300'000'000'000},
        {R"("1h")", 3'600'000'000'000},
        {R"("1d")", 86'400'000'000'000},
    };
    for (const auto& [min_age, ns] : cases) {
        SCOPED_TRACE(min_age);
        EXPECT_EQ(decode_leaks(R"({"min_age":)" + min_age + "}").min_age_ns, ns);
    }
}

TEST(ProtocolLeaksArgs, BadMinAgeIsABadRequestNamingTheArg) {
    for (const std::string_view min_age : {R"("-1")", R"("5 parsecs")", "-2", "-0.5", R"("")", R"("s")", R"("30")",
                                           R"(" 30s")", R"("30S")", R"("1.5h")", R"("+5s")"}) {
        SCOPED_TRACE(min_age);
        const Error error = decode_leaks_error(R"({"min_age":)" + std::string(min_age) + "}");
        EXPECT_EQ(error.code, ErrorCode::bad_request);
        EXPECT_TRUE(error.message.starts_with("\"args.min_age\": expected a number of seconds")) << error.message;
    }
}

// --- durations ---------------------------------------------------------------------------------

std::optional<std::uint64_t> duration(const json& value) {
    std::string why_not;
    const auto ns = parse_duration_ns(value, why_not);
    EXPECT_EQ(ns.has_value(), why_not.empty()) << value << ": " << why_not;
    return ns;
}

TEST(ProtocolDuration, EveryUnit) {
    EXPECT_EQ(duration("7ns"), 7u);
    EXPECT_EQ(duration("7us"), 7'000u);
    EXPECT_EQ(duration("7ms"), 7'000'000u);
    EXPECT_EQ(duration("7s"), 7'000'000'000u);
    EXPECT_EQ(duration("7m"), 420'000'000'000u);
    EXPECT_EQ(duration("7h"), 25'200'000'000'000u);
    EXPECT_EQ(duration("7d"), 604'800'000'000'000u);
    EXPECT_EQ(duration("0d"), 0u);
}

TEST(ProtocolDuration, NumbersAreSecondsRoundedToTheNanosecond) {
    EXPECT_EQ(duration(json(3)), 3'000'000'000u);  // a signed json integer, as code builds it
    EXPECT_EQ(duration(json(3u)), 3'000'000'000u);
    EXPECT_EQ(duration(json(0.1)), 100'000'000u);
    EXPECT_EQ(duration(json(1e-10)), 0u);
    EXPECT_EQ(duration(json(-0.0)), 0u);
    EXPECT_FALSE(duration(json(-2)));
}

TEST(ProtocolDuration, ValuesPastTwoToTheSixtyFourNanosecondsAreRejected) {
    EXPECT_EQ(duration("18446744073709551615ns"), 18446744073709551615u);
    for (const json& value : {json("18446744073709551616ns"), json("213504d"), json("99999999999999999999999s"),
                              json(18446744074u), json(1e300)}) {
        SCOPED_TRACE(value.dump());
        std::string why_not;
        EXPECT_FALSE(parse_duration_ns(value, why_not));
        EXPECT_NE(why_not.find("too long"), std::string::npos) << why_not;
    }
}

TEST(ProtocolDuration, FormatUsesTheCoarsestExactUnitAndRoundTrips) {
    EXPECT_EQ(format_duration(0), "0s");
    EXPECT_EQ(format_duration(30'000'000'000), "30s");
    EXPECT_EQ(format_duration(90'000'000'000), "90s");
    EXPECT_EQ(format_duration(120'000'000'000), "2m");
    EXPECT_EQ(format_duration(500'000'000), "500ms");
    EXPECT_EQ(format_duration(86'400'000'000'000), "1d");
    EXPECT_EQ(format_duration(1'500), "1500ns");
    for (const std::uint64_t ns :
         {0ULL, 1ULL, 999ULL, 1'000ULL, 1'234'567'891ULL, 3'600'000'000'000ULL, 18446744073709551615ULL}) {
        EXPECT_EQ(duration(format_duration(ns)), ns) << format_duration(ns);
    }
}

// --- encoding --------------------------------------------------------------------------------

TEST(ProtocolEncode, EveryMessageIsExactlyOneLineEvenWithNewlinesInside) {
    const std::string error = encode_error(1, Error{ErrorCode::internal, "line one\nline two\r\n"});
    EXPECT_EQ(error.find('\n'), error.size() - 1) << error;
    const std::string result = encode_result(1, {{"function", "evil\nsymbol"}});
    EXPECT_EQ(result.find('\n'), result.size() - 1) << result;
}

TEST(ProtocolEncode, InvalidUtf8InAResultIsReplacedNotThrown) {
    std::string line;
    EXPECT_NO_THROW(line = encode_result(1, {{"function", "bad\xff"}}));
    std::string why_not;
    const auto response = decode_response(line, why_not);
    ASSERT_TRUE(response) << why_not;
    EXPECT_EQ(response->result["function"], "bad\xEF\xBF\xBD");
}

TEST(ProtocolEncode, ErrorWithoutIdHasNullId) {
    EXPECT_EQ(encode_error(std::nullopt, Error{ErrorCode::parse_error, "x"}),
              "{\"v\":1,\"id\":null,\"ok\":false,\"error\":{\"code\":\"parse_error\",\"message\":\"x\"}}\n");
}

TEST(ProtocolEncode, TooLargeErrorStatesTheLimit) {
    const Error error = line_too_large_error();
    EXPECT_EQ(error.code, ErrorCode::too_large);
    EXPECT_NE(error.message.find("65536"), std::string::npos) << error.message;
}

// --- decoding responses (client side) --------------------------------------------------------

std::string response_failure(std::string_view line) {
    std::string why_not;
    const auto response = decode_response(line, why_not);
    EXPECT_FALSE(response) << line << " was accepted";
    EXPECT_FALSE(why_not.empty()) << line;
    return why_not;
}

TEST(ProtocolResponse, ErrorWithNullIdDecodes) {
    std::string why_not;
    const auto response =
        decode_response(R"({"v":1,"id":null,"ok":false,"error":{"code":"parse_error","message":"not JSON"}})", why_not);
    ASSERT_TRUE(response) << why_not;
    EXPECT_FALSE(response->id);
    EXPECT_FALSE(response->ok);
    EXPECT_EQ(response->error, (Error{ErrorCode::parse_error, "not JSON"}));
}

TEST(ProtocolResponse, UnknownFieldsAreIgnoredSoResultsCanGrow) {
    std::string why_not;
    const auto response =
        decode_response(R"({"v":1,"id":4,"ok":true,"result":{"reset":true},"server_time_ns":5})", why_not);
    ASSERT_TRUE(response) << why_not;
    EXPECT_EQ(response->result, (json{{"reset", true}}));
}

TEST(ProtocolResponse, GarbageIsRejectedWithAReason) {
    EXPECT_TRUE(response_failure("garbage").starts_with("not JSON"));
    EXPECT_EQ(response_failure("[1]"), "the reply is not a JSON object");
    EXPECT_EQ(response_failure(R"({"id":1,"ok":true,"result":{}})"), "the reply is not protocol version 1");
    EXPECT_EQ(response_failure(R"({"v":2,"id":1,"ok":true,"result":{}})"), "the reply is not protocol version 1");
    EXPECT_EQ(response_failure(R"({"v":1,"ok":true,"result":{}})"), "the reply has no \"id\"");
    EXPECT_EQ(response_failure(R"({"v":1,"id":-1,"ok":true,"result":{}})"),
              "the reply's \"id\" is neither an unsigned integer nor null");
    EXPECT_EQ(response_failure(R"({"v":1,"id":1,"result":{}})"), "the reply has no boolean \"ok\"");
    EXPECT_EQ(response_failure(R"({"v":1,"id":1,"ok":"yes","result":{}})"), "the reply has no boolean \"ok\"");
    EXPECT_EQ(response_failure(R"({"v":1,"id":1,"ok":true})"), "the reply is ok but has no \"result\"");
    EXPECT_EQ(response_failure(R"({"v":1,"id":1,"ok":false})"), "the reply failed but has no \"error\" object");
    EXPECT_EQ(response_failure(R"({"v":1,"id":1,"ok":false,"error":{"message":"m"}})"),
              "the reply's \"error.code\" is not a string");
    EXPECT_EQ(response_failure(R"({"v":1,"id":1,"ok":false,"error":{"code":"internal","message":5}})"),
              "the reply's \"error.message\" is not a string");
    EXPECT_EQ(response_failure(R"({"v":1,"id":1,"ok":false,"error":{"code":"exploded","message":"m"}})"),
              "the reply's error code \"exploded\" is not one this client knows");
}

// --- framing -----------------------------------------------------------------------------------

// Drains `reader`, writing each line as-is and each too_large as "<too_large>".
std::vector<std::string> drain(LineReader& reader) {
    std::vector<std::string> out;
    std::string line;
    while (true) {
        switch (reader.next(line)) {
            case LineReader::Status::line:
                out.push_back(line);
                break;
            case LineReader::Status::too_large:
                out.emplace_back("<too_large>");
                break;
            case LineReader::Status::need_more:
                return out;
        }
    }
}

std::vector<std::string> feed_bytewise(LineReader& reader, std::string_view bytes) {
    std::vector<std::string> out;
    for (const char c : bytes) {
        reader.feed(std::string_view(&c, 1));
        for (std::string& line : drain(reader)) out.push_back(std::move(line));
    }
    return out;
}

TEST(ProtocolLineReader, LinesSplitByteByByteAreReassembled) {
    LineReader reader;
    const std::string request = encode_request({.id = 1, .op = Op::leaks, .leaks = {}});
    EXPECT_EQ(feed_bytewise(reader, request + request),
              (std::vector<std::string>{request.substr(0, request.size() - 1), request.substr(0, request.size() - 1)}));
    EXPECT_EQ(reader.buffered(), 0u);
}

TEST(ProtocolLineReader, SeveralLinesInOneFeedAndAPartialTail) {
    LineReader reader;
    reader.feed("one\ntwo\nthree\nfo");
    EXPECT_EQ(drain(reader), (std::vector<std::string>{"one", "two", "three"}));
    EXPECT_EQ(reader.buffered(), 2u);
    reader.feed("ur\n");
    EXPECT_EQ(drain(reader), (std::vector<std::string>{"four"}));
    EXPECT_EQ(reader.buffered(), 0u);
}

// kleakctl's reader takes replies of any size in 64 KiB pieces; each piece
// is searched once (the reader keeps how far it looked), and the lines come
// out whole whatever the split.
TEST(ProtocolLineReader, ALongReplyInManyPiecesComesOutWholeWithTheLineAfterIt) {
    LineReader reader(std::numeric_limits<std::size_t>::max());
    const std::string big(3'000'000, 'x');
    const std::string stream = big + "\nnext\n" + big.substr(0, 70'000) + "\r\n";
    std::vector<std::string> lines;
    for (std::size_t at = 0; at < stream.size(); at += 65536) {
        reader.feed(std::string_view(stream).substr(at, 65536));
        for (const auto& l : drain(reader)) lines.push_back(l);
    }
    ASSERT_EQ(lines.size(), 3u);
    EXPECT_EQ(lines[0], big);
    EXPECT_EQ(lines[1], "next");
    EXPECT_EQ(lines[2], big.substr(0, 70'000));
    EXPECT_EQ(reader.buffered(), 0u);
}

TEST(ProtocolLineReader, CrLfEndingsAreStrippedButInnerCrIsKept) {
    LineReader reader;
    reader.feed("one\r\ntwo\n\r\nx\ry\r\n");
    EXPECT_EQ(drain(reader), (std::vector<std::string>{"one", "two", "x\ry"}));
}

TEST(ProtocolLineReader, EmptyLinesAreSkipped) {
    LineReader reader;
    reader.feed("\n\none\n\r\n\ntwo\n\n");
    EXPECT_EQ(drain(reader), (std::vector<std::string>{"one", "two"}));
    EXPECT_EQ(reader.buffered(), 0u);
}

TEST(ProtocolLineReader, ALineExactlyAtTheLimitIsAccepted) {
    LineReader reader;  // kMaxRequestBytes, newline included
    const std::string content(kMaxRequestBytes - 1, 'a');
    reader.feed(content + "\n");
    EXPECT_EQ(drain(reader), (std::vector<std::string>{content}));
}

TEST(ProtocolLineReader, OneByteOverIsTooLargeOnceAndTheNextLineStillParses) {
    LineReader reader;
    const std::string oversized(kMaxRequestBytes, 'a');  // + '\n' = one byte over
    const std::string next = encode_request({.id = 2, .op = Op::stats, .leaks = {}});
    reader.feed(oversized + "\n" + next);
    const std::vector<std::string> lines = drain(reader);
    ASSERT_EQ(lines.size(), 2u);
    EXPECT_EQ(lines[0], "<too_large>");
    EXPECT_EQ(decode_ok(lines[1]).op, Op::stats);
}

TEST(ProtocolLineReader, TooLargeIsReportedBeforeTheLineEndsAndMemoryStaysBounded) {
    LineReader reader(16);
    std::vector<std::string> seen;
    const std::string chunk(10, 'x');
    for (int i = 0; i < 1000; ++i) {
        reader.feed(chunk);
        for (std::string& line : drain(reader)) seen.push_back(std::move(line));
        EXPECT_LE(reader.buffered(), 16u + chunk.size());
    }
    EXPECT_EQ(seen, (std::vector<std::string>{"<too_large>"}));
    reader.feed("tail\nok\n");
    EXPECT_EQ(drain(reader), (std::vector<std::string>{"ok"}));
}

TEST(ProtocolLineReader, SmallLimitBoundaries) {
    LineReader reader(4);  // at most 3 bytes of content + '\n'
    EXPECT_EQ(feed_bytewise(reader, "abc\nabcd\nab\n"), (std::vector<std::string>{"abc", "<too_large>", "ab"}));
    // "\r\n" counts toward the limit: these are raw bytes on the wire.
    reader.feed("ab\r\nabc\r\nz\n");
    EXPECT_EQ(drain(reader), (std::vector<std::string>{"ab", "<too_large>", "z"}));
}

TEST(ProtocolLineReader, TooLargeIsKnownAtMaxLineBytesWithoutANewline) {
    LineReader reader(4);
    reader.feed("abc");
    EXPECT_EQ(drain(reader), std::vector<std::string>{});
    reader.feed("d");  // 4 bytes and no newline: with it the line would be 5
    EXPECT_EQ(drain(reader), (std::vector<std::string>{"<too_large>"}));
    EXPECT_EQ(reader.buffered(), 0u);
    reader.feed("efg\nok\n");
    EXPECT_EQ(drain(reader), (std::vector<std::string>{"ok"}));
}

TEST(ProtocolLineReader, ConsecutiveOversizedLinesAreEachReportedOnce) {
    LineReader reader(4);
    reader.feed("aaaaaaa\nbbbbbbbbbb\nok\n");
    EXPECT_EQ(drain(reader), (std::vector<std::string>{"<too_large>", "<too_large>", "ok"}));
}

TEST(PrintkArgs, DefaultsAndEveryArg) {
    auto decoded = decode_request(R"({"v":1,"id":1,"op":"printk"})");
    ASSERT_TRUE(decoded.request);
    EXPECT_EQ(decoded.request->printk, PrintkArgs{});
    decoded = decode_request(
        R"({"v":1,"id":1,"op":"printk","args":{"after_seq":7,"since_ns":5,"limit":3,"level":"err","follow":true}})");
    ASSERT_TRUE(decoded.request);
    EXPECT_EQ(decoded.request->printk,
              (PrintkArgs{.after_seq = 7, .since_ns = 5, .limit = 3, .level = 3, .follow = true}));
}

TEST(PrintkArgs, BadArgsNameTheField) {
    for (const auto& [line, field] : std::vector<std::pair<std::string, std::string>>{
             {R"({"v":1,"id":1,"op":"printk","args":{"level":8}})", "args.level"},
             {R"({"v":1,"id":1,"op":"printk","args":{"level":"warning"}})", "args.level"},
             {R"({"v":1,"id":1,"op":"printk","args":{"follow":1}})", "args.follow"},
             {R"({"v":1,"id":1,"op":"printk","args":{"limit":-1}})", "args.limit"},
             {R"({"v":1,"id":1,"op":"printk","args":{"after_seq":"3"}})", "args.after_seq"},
             {R"({"v":1,"id":1,"op":"printk","args":{"tail":3}})", "args.tail"},
         }) {
        const auto decoded = decode_request(line);
        ASSERT_TRUE(decoded.error) << line;
        EXPECT_EQ(decoded.error->code, ErrorCode::bad_request);
        EXPECT_NE(decoded.error->message.find(field), std::string::npos) << decoded.error->message;
        EXPECT_EQ(decoded.id, 1u);
    }
}

}  // namespace
}  // namespace kleak::proto
