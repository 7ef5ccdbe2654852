// Real-kernel tests of the BPF cost knobs (rodata set at load time):
// --sample-shift keeps an allocation and its free together by hashing the
// pointer, --no-emit keeps the programs attached but writes nothing,
// --min-size skips small allocations (and so leaves their frees unmatched).
// Counts only: nothing here asserts on timing.
#include <sys/resource.h>

#include <nlohmann/json.hpp>

#include "kernel_test_support.h"

namespace {

using namespace kleak_test;
using nlohmann::json;
using namespace std::chrono_literals;

// Enough pipes that 1/16 of their allocations is a steady count: each pipe
// allocates twice in alloc_pipe_info (the pipe_inode_info and its buffer
// array), so 2 * 1024 draws of probability 1/16: 128 expected, sigma ~11.
constexpr int kManyPipes = 1024;
constexpr int kSampleShift = 4;

// Two descriptors per pipe, beyond the usual soft limit of 1024.
void allow_descriptors(rlim_t n) {
    rlimit rl{};
    ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur >= n) return;
    rl.rlim_cur = std::min(n, rl.rlim_max);
    ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &rl), 0);
    ASSERT_GE(rl.rlim_cur, n) << "the hard RLIMIT_NOFILE is too low for this test";
}

json stop_for_report(Kleakd& tracer) {
    const Result r = tracer.stop();
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return json::parse(r.out);
}

// `kleakd trace --json --interval 60 <knobs>` while `pipes` pipes are opened,
// held briefly and closed; returns the final report once their frees (some
// RCU-deferred) have had time to arrive. Empty when the tracer did not start.
json report_of_pipes_opened_and_closed(const std::vector<std::string>& knobs, int pipes) {
    std::vector<std::string> args{"trace", "--json", "--interval", "60"};
    args.insert(args.end(), knobs.begin(), knobs.end());
    Kleakd tracer(args);
    if (!tracer.wait_for_stderr("tracing kmem:kmalloc")) {
        ADD_FAILURE() << tracer.stop().err;
        return {};
    }
    {
        HeldPipes held(pipes);
        EXPECT_EQ(held.count(), pipes);
        std::this_thread::sleep_for(50ms);
    }
    std::this_thread::sleep_for(500ms);
    let_drain();
    return stop_for_report(tracer);
}

TEST(KernelKnobs, SampleShiftKeepsAboutOneInSixteenHeldAllocations) {
    REQUIRE_KERNEL();
    allow_descriptors(2 * kManyPipes + 64);
    Kleakd tracer({"trace", "--json", "--interval", "60", "--sample-shift", std::to_string(kSampleShift)});
    ASSERT_TRUE(tracer.wait_for_stderr("tracing kmem:kmalloc")) << tracer.stop().err;
    HeldPipes pipes(kManyPipes);
    ASSERT_EQ(pipes.count(), kManyPipes);
    let_drain();
    const json report = stop_for_report(tracer);  // the pipes are still held

    const FunctionTotals pipe = by_function(report, "alloc_pipe_info");
    const std::uint64_t expected = 2 * kManyPipes >> kSampleShift;  // 128
    // Roughly 1/16: between half and twice the expectation (over 5 sigma either
    // way), and far from both "everything" (2048) and "nothing".
    EXPECT_GE(pipe.outstanding, expected / 2) << report.dump(1).substr(0, 3000);
    EXPECT_LE(pipe.outstanding, expected * 2) << report.dump(1).substr(0, 3000);
    EXPECT_EQ(report.at("run").at("sample_shift"), kSampleShift);
    EXPECT_EQ(report.at("totals").at("dropped"), 0u);
}

TEST(KernelKnobs, SampledPairsStillMatch) {
    REQUIRE_KERNEL();
    allow_descriptors(2 * kManyPipes + 64);
    // Closing frees the buffers and the pipe_inode_info.
    const json report = report_of_pipes_opened_and_closed({"--sample-shift", std::to_string(kSampleShift)}, kManyPipes);
    ASSERT_FALSE(report.is_null());

    const FunctionTotals pipe = by_function(report, "alloc_pipe_info");
    // The sample kept some allocations, and the free of every one of them:
    // the pointer decides for both, so nothing is left outstanding.
    EXPECT_GT(pipe.allocs, 0u) << report.dump(1).substr(0, 3000);
    EXPECT_LT(pipe.allocs, static_cast<std::uint64_t>(kManyPipes));  // 2048 allocations; about 128 kept
    EXPECT_EQ(pipe.frees, pipe.allocs) << report.dump(1).substr(0, 3000);
    EXPECT_EQ(pipe.outstanding, 0u) << report.dump(1).substr(0, 3000);
    for (const auto& u : report.at("unmatched_frees"))
        EXPECT_NE(u.at("function"), "free_pipe_info") << "a sampled pipe's free without its allocation: " << u;
}

TEST(KernelKnobs, NoEmitAttachesButWritesNothing) {
    REQUIRE_KERNEL();
    Kleakd tracer({"trace", "--json", "--interval", "60", "--no-emit"});
    ASSERT_TRUE(tracer.wait_for_stderr("tracing kmem:kmalloc")) << tracer.stop().err;
    {
        HeldPipes pipes(kPipes);
        ASSERT_EQ(pipes.count(), kPipes);
        let_drain();
    }
    const json report = stop_for_report(tracer);
    EXPECT_EQ(report.at("run").at("records"), 0u);
    EXPECT_EQ(report.at("run").at("emit_records"), false);
    EXPECT_EQ(report.at("totals").at("allocs"), 0u);
    EXPECT_EQ(report.at("totals").at("frees"), 0u);
    EXPECT_EQ(report.at("totals").at("dropped"), 0u);
    // The programs were attached all along: each is listed, read from the
    // kernel (bpf_prog_info) at the end, with its recursion misses.
    ASSERT_TRUE(report.at("losses").contains("programs"));
    EXPECT_GE(report.at("losses").at("programs").size(), 4u);
    for (const auto& p : report.at("losses").at("programs")) EXPECT_TRUE(p.contains("recursion_misses")) << p;
}

TEST(KernelKnobs, MinSizeSkipsSmallAllocationsAndLeavesTheirFreesUnmatched) {
    REQUIRE_KERNEL();
    // Nothing a pipe allocates is anywhere near 1 MiB.
    const json report = report_of_pipes_opened_and_closed({"--min-size", "1048576"}, kPipes);
    ASSERT_FALSE(report.is_null());
    EXPECT_EQ(by_function(report, "alloc_pipe_info").allocs, 0u);
    // The documented trade-off: a free has no size, so it is still recorded,
    // and with its allocation skipped it is unmatched.
    EXPECT_GE(report.at("totals").at("unmatched_frees").get<std::uint64_t>(), static_cast<std::uint64_t>(kPipes));
}

TEST(KernelKnobs, SampleShiftOutOfRangeIsAUsageError) {
    const Result r = run_to_end({"trace", "--sample-shift", "33"});
    EXPECT_EQ(r.exit_code, 2) << r.err;
}

}  // namespace
