// Kernel stacks: allocation classes keep the origin (stack, process) apart,
// per-stack live aggregates, trimming at the call site, the JSON and folded
// outputs, and which sites the suspects mode captures.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <sstream>

#include "core/process_origin.h"
#include "core/stack_capture.h"
#include "core/stacks_query.h"
#include "test_helpers.h"

namespace kleak::core {
namespace {

using test::alloc_event;
using test::free_event;

constexpr std::uint64_t kPipeSite = 0xffffffff81300010;   // alloc_pipe_info+0x10
constexpr std::uint64_t kOtherSite = 0xffffffff81400020;  // other_alloc+0x20
constexpr std::uint64_t kCreate = 0xffffffff81300105;     // create_pipe_files+0x5
constexpr std::uint64_t kDoPipe = 0xffffffff81300203;     // do_pipe2+0x3
constexpr std::uint64_t kSyscall = 0xffffffff81000042;    // do_syscall_64+0x42
constexpr std::uint64_t kKmalloc = 0xffffffff81200077;    // __kmalloc+0x77: the allocator's own frame
constexpr std::uint64_t kOtherCaller = 0xffffffff81500030;  // other_caller+0x30 [mod]

FixedSymbolizer symbols() {
    return FixedSymbolizer({
        {kPipeSite, {"alloc_pipe_info", 0x10, ""}},
        {kOtherSite, {"other_alloc", 0x20, ""}},
        {kCreate, {"create_pipe_files", 0x5, ""}},
        {kDoPipe, {"do_pipe2", 0x3, ""}},
        {kSyscall, {"do_syscall_64", 0x42, ""}},
        {kKmalloc, {"__kmalloc", 0x77, ""}},
        {kOtherCaller, {"other_caller", 0x30, "mod"}},
    });
}

// Stack ids as the BPF stack map would hold them.
class FakeStacks final : public StackSource {
public:
    std::map<std::uint32_t, std::vector<std::uint64_t>> stacks;
    std::vector<std::uint64_t> frames(std::uint32_t id) override {
        const auto it = stacks.find(id);
        return it == stacks.end() ? std::vector<std::uint64_t>{} : it->second;
    }
};

FakeStacks two_pipe_stacks() {
    FakeStacks s;
    s.stacks[0] = {kKmalloc, kPipeSite, kCreate, kDoPipe, kSyscall};  // stack 0: via do_pipe2
    s.stacks[1] = {kKmalloc, kPipeSite, kSyscall};                    // stack 1: another path
    s.stacks[2] = {kOtherSite, kOtherCaller};                         // no allocator frame
    return s;
}

TEST(ClassTable, TheOriginMakesItsOwnClass) {
    ClassTable table;
    const ClassId plain = table.intern(3, 64);
    const ClassId with_stack = table.intern(3, 64, 0, Origin{5, 100});
    const ClassId other_process = table.intern(3, 64, 0, Origin{5, 101});
    EXPECT_NE(plain, with_stack);
    EXPECT_NE(with_stack, other_process);
    EXPECT_EQ(table.intern(3, 64, 0, Origin{5, 100}), with_stack);  // from the cache
    EXPECT_EQ(table.intern(3, 64), plain);
    EXPECT_EQ(table[with_stack].origin, (Origin{5, 100}));
    EXPECT_EQ(table[plain].origin, Origin{});
}

// Every short-lived process at a captured site would add a class forever:
// past kProcessClassLimit classes the process is dropped, the stack kept.
TEST(ClassTable, ProcessesStopMakingClassesPastTheLimit) {
    Tracker tracker;
    const std::uint32_t processes = static_cast<std::uint32_t>(kProcessClassLimit) + 5000;
    for (std::uint32_t i = 0; i < processes; ++i)
        tracker.apply(test::alloc_event({.ts = 1000 + i, .ptr = 0xffff888000000000ULL + std::uint64_t{i} * 64,
                                         .site = 0xffffffff81000100ULL, .req = 64, .alloc = 64, .tgid = 1000 + i,
                                         .stack = 7}));
    EXPECT_EQ(tracker.class_count(), kProcessClassLimit + 1);  // the last one: stack 7, no process
    EXPECT_EQ(tracker.totals().outstanding, processes);
}

TEST(StacksQuery, AddsUpLiveAllocationsPerSiteAndStack) {
    Tracker tracker;
    // Stack 0 (wire value 1) three times, one freed; stack 1 once; one without a stack.
    tracker.apply(alloc_event({.ts = 1, .ptr = 0x10, .site = kPipeSite, .alloc = 192, .tgid = 7, .stack = 1}));
    tracker.apply(alloc_event({.ts = 2, .ptr = 0x20, .site = kPipeSite, .alloc = 192, .tgid = 7, .stack = 1}));
    tracker.apply(alloc_event({.ts = 3, .ptr = 0x30, .site = kPipeSite, .alloc = 192, .tgid = 8, .stack = 1}));
    tracker.apply(alloc_event({.ts = 4, .ptr = 0x40, .site = kPipeSite, .alloc = 192, .tgid = 7, .stack = 2}));
    tracker.apply(alloc_event({.ts = 5, .ptr = 0x50, .site = kPipeSite, .alloc = 192}));
    tracker.apply(free_event({.ts = 6, .ptr = 0x20, .site = kOtherSite}));

    const std::vector<StackTotal> rows = live_stacks(tracker);
    ASSERT_EQ(rows.size(), 2u);
    EXPECT_EQ(rows[0].stack, 1u);
    EXPECT_EQ(rows[0].outstanding, 2u);
    EXPECT_EQ(rows[0].outstanding_bytes, 384u);
    EXPECT_EQ(rows[1].stack, 2u);
    EXPECT_EQ(rows[1].outstanding, 1u);

    EXPECT_EQ(live_processes(tracker, std::nullopt).size(), 2u);  // every site: tgids 7 and 8
    EXPECT_EQ(live_processes(tracker, std::nullopt)[0].outstanding, 2u);
    const std::vector<ProcessTotal> processes = live_processes(tracker, rows[0].site);
    ASSERT_EQ(processes.size(), 2u);
    EXPECT_EQ(processes[0].tgid, 7u);  // two live (one per stack)
    EXPECT_EQ(processes[0].outstanding, 2u);
    EXPECT_EQ(processes[1].tgid, 8u);
    EXPECT_EQ(processes[1].outstanding, 1u);
}

// What `leaks`, `suspects` and snapshots name each site row's comms and
// cgroups from: per site, keyed as its rows print it, its processes by bytes.
TEST(StacksQuery, ProcessesBySiteKeepsEachSitesProcessesApart) {
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 1, .ptr = 0x10, .site = kPipeSite, .alloc = 192, .tgid = 7, .stack = 1}));
    tracker.apply(alloc_event({.ts = 2, .ptr = 0x20, .site = kPipeSite, .alloc = 192, .tgid = 7, .stack = 2}));
    tracker.apply(alloc_event({.ts = 3, .ptr = 0x30, .site = kPipeSite, .alloc = 1024, .tgid = 8, .stack = 1}));
    tracker.apply(alloc_event({.ts = 4, .ptr = 0x40, .site = kOtherSite, .alloc = 64, .tgid = 7, .stack = 3}));
    tracker.apply(alloc_event({.ts = 5, .ptr = 0x50, .site = kOtherSite, .alloc = 64, .tgid = 9, .stack = 3}));
    tracker.apply(free_event({.ts = 6, .ptr = 0x50, .site = kOtherSite}));  // tgid 9 has nothing live
    tracker.apply(alloc_event({.ts = 7, .ptr = 0x60, .site = 0xffffffff81600000, .alloc = 64}));  // no stack: no row
    FixedSymbolizer names = symbols();

    const auto by_site = processes_by_site(tracker, names);
    ASSERT_EQ(by_site.size(), 2u);
    const std::vector<ProcessTotal>& pipe = by_site.at("alloc_pipe_info+0x10");
    ASSERT_EQ(pipe.size(), 2u);
    EXPECT_EQ(pipe[0].tgid, 8u);  // most bytes first: 1024 against 2 x 192
    EXPECT_EQ(pipe[0].outstanding_bytes, 1024u);
    EXPECT_EQ(pipe[1].tgid, 7u);
    EXPECT_EQ(pipe[1].outstanding, 2u);  // both stacks
    const std::vector<ProcessTotal>& other = by_site.at("other_alloc+0x20");
    ASSERT_EQ(other.size(), 1u);
    EXPECT_EQ(other[0].tgid, 7u);
}

// Sampled `all` mode is labelled wherever stacks are printed; folded lines have no room.
TEST(StacksQuery, SampledNoteOnlyWhenTheResultIsSampled) {
    EXPECT_EQ(sampled_note(nlohmann::json{{"stacks", nlohmann::json::array()}}), "");
    EXPECT_EQ(sampled_note(nlohmann::json{{"sample_shift", 0}}), "");
    EXPECT_EQ(sampled_note(nlohmann::json{{"sample_shift", 3}}),
              "sampled: 1 in 8 allocations get a stack, so these totals are about 1/8 of the live ones");
}

TEST(StacksQuery, DropsTheFramesBeforeTheCallSite) {
    const std::vector<std::uint64_t> frames{kKmalloc, kPipeSite, kCreate};
    const auto kept = from_call_site(frames, kPipeSite);
    ASSERT_EQ(kept.size(), 2u);
    EXPECT_EQ(kept[0], kPipeSite);
    // Without the call site's frame the stack is kept whole.
    EXPECT_EQ(from_call_site(frames, kOtherSite).size(), 3u);
}

TEST(StacksQuery, JsonNamesFramesInnermostFirstAndFiltersByFunction) {
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 1, .ptr = 0x10, .site = kPipeSite, .alloc = 192, .tgid = 7, .stack = 1}));
    tracker.apply(alloc_event({.ts = 2, .ptr = 0x20, .site = kOtherSite, .alloc = 4096, .tgid = 9, .stack = 3}));
    FakeStacks stacks = two_pipe_stacks();
    FixedSymbolizer names = symbols();

    const nlohmann::json all = stacks_to_json(tracker, stacks, names, {});
    ASSERT_EQ(all.at("stacks").size(), 2u);
    EXPECT_EQ(all.at("outstanding_bytes"), 4288u);
    const auto& other = all.at("stacks")[0];  // most bytes first
    EXPECT_EQ(other.at("site"), "other_alloc+0x20");
    EXPECT_EQ(other.at("frames"), nlohmann::json({"other_alloc+0x20", "other_caller+0x30 [mod]"}));

    const nlohmann::json pipes = stacks_to_json(tracker, stacks, names, {.function = "alloc_pipe_info"});
    ASSERT_EQ(pipes.at("stacks").size(), 1u);
    const auto& row = pipes.at("stacks")[0];
    EXPECT_EQ(row.at("function"), "alloc_pipe_info");
    EXPECT_EQ(row.at("stack_id"), 0u);
    EXPECT_EQ(row.at("frames"),
              nlohmann::json({"alloc_pipe_info+0x10", "create_pipe_files+0x5", "do_pipe2+0x3", "do_syscall_64+0x42"}));
    EXPECT_EQ(row.at("processes")[0].at("tgid"), 7u);
    EXPECT_EQ(pipes.at("outstanding"), 1u);

    // The frames to name before answering: the kept frames of the top stacks.
    const std::vector<std::uint64_t> to_name =
        stack_frame_addresses(tracker, stacks, names, {.function = "alloc_pipe_info"});
    EXPECT_EQ(to_name, (std::vector<std::uint64_t>{kSyscall, kPipeSite, kCreate, kDoPipe}));
}

TEST(StacksQuery, FoldedLinesAreOutermostFirstAndSumToTheTotals) {
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 1, .ptr = 0x10, .site = kPipeSite, .alloc = 192, .tgid = 7, .stack = 1}));
    tracker.apply(alloc_event({.ts = 2, .ptr = 0x20, .site = kPipeSite, .alloc = 192, .tgid = 7, .stack = 1}));
    tracker.apply(alloc_event({.ts = 3, .ptr = 0x30, .site = kOtherSite, .alloc = 64, .tgid = 7, .stack = 3}));
    FakeStacks stacks = two_pipe_stacks();
    FixedSymbolizer names = symbols();
    const nlohmann::json result = stacks_to_json(tracker, stacks, names, {});

    EXPECT_EQ(folded_stacks(result, StackWeight::bytes),
              "do_syscall_64;do_pipe2;create_pipe_files;alloc_pipe_info 384\n"
              "other_caller [mod];other_alloc 64\n");
    EXPECT_EQ(folded_stacks(result, StackWeight::count),
              "do_syscall_64;do_pipe2;create_pipe_files;alloc_pipe_info 2\n"
              "other_caller [mod];other_alloc 1\n");
}

TEST(StacksQuery, FoldedMergesStacksThatDifferOnlyInOffsets) {
    const nlohmann::json result = {{"stacks",
                                    {{{"site", "f+0x1"}, {"frames", {"f+0x1", "g+0x10"}}, {"outstanding", 2}, {"outstanding_bytes", 20}},
                                     {{"site", "f+0x2"}, {"frames", {"f+0x2", "g+0x10"}}, {"outstanding", 3}, {"outstanding_bytes", 30}}}}};
    EXPECT_EQ(folded_stacks(result, StackWeight::count), "g;f 5\n");
}

TEST(StackCapture, SuspectsAreTheGrowingSitesAndTheNamedFunctions) {
    Tracker tracker;
    tracker.apply(alloc_event({.ts = 1, .ptr = 0x10, .site = kPipeSite, .alloc = 192}));
    tracker.apply(alloc_event({.ts = 2, .ptr = 0x20, .site = kOtherSite, .alloc = 64}));
    FixedSymbolizer names = symbols();
    const SiteVerdicts verdicts(10'000'000'000, VerdictRules{});  // no sample yet: every site young

    EXPECT_TRUE(capture_sites(tracker, verdicts, {}, names).empty());
    const std::vector<std::string> functions{"other_alloc"};
    EXPECT_EQ(capture_sites(tracker, verdicts, functions, names), std::vector<std::uint64_t>{kOtherSite});
    EXPECT_TRUE(capture_sites(tracker, verdicts, functions, names, 0).empty());  // the limit
}

TEST(StackCapture, SiteBitsMatchTheBpfHash) {
    const std::vector<std::uint64_t> sites{kPipeSite, kOtherSite};
    const SiteBits bits = site_bits(sites);
    int set = 0;
    for (const std::uint64_t word : bits) set += __builtin_popcountll(word);
    EXPECT_EQ(set, site_bit(kPipeSite) == site_bit(kOtherSite) ? 1 : 2);
    const std::uint32_t bit = site_bit(kPipeSite);
    EXPECT_LT(bit, KLEAK_STACK_SITE_BITS);
    EXPECT_NE(bits[bit / 64] & (std::uint64_t{1} << (bit % 64)), 0u);
    EXPECT_EQ(site_bit(kPipeSite), static_cast<std::uint32_t>((kPipeSite * 0x9E3779B97F4A7C15ULL) >> 52));
}

TEST(StackCapture, ModeNamesRoundTrip) {
    for (const StackMode mode : {StackMode::off, StackMode::suspects, StackMode::all})
        EXPECT_EQ(parse_stack_mode(stack_mode_name(mode)), mode);
    EXPECT_FALSE(parse_stack_mode("some"));
}

}  // namespace
}  // namespace kleak::core

namespace kleak::core {
namespace {

std::string fixture(const char* name) {
    std::ifstream in(std::string(KLEAK_FIXTURES_DIR) + "/cgroup/" + name);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

TEST(ProcessOrigin, CgroupPathComesFromTheV2Line) {
    EXPECT_EQ(cgroup_v2_path(fixture("hybrid.txt")), "/system.slice/kleak-test.service/worker");
    EXPECT_EQ(cgroup_v2_path(fixture("container.txt")), "/machine.slice/libpod-4f2a.scope/container");
    EXPECT_EQ(cgroup_v2_path(fixture("v1_only.txt")), "");
    EXPECT_EQ(cgroup_v2_path(""), "");
}

TEST(ProcessOrigin, TheInnermostUnitOrScopeNamesTheCgroup) {
    EXPECT_EQ(systemd_unit("/system.slice/kleak-test.service/worker"), "kleak-test.service");
    EXPECT_EQ(systemd_unit("/machine.slice/libpod-4f2a.scope/container"), "libpod-4f2a.scope");
    EXPECT_EQ(systemd_unit("/user.slice/user-1000.slice/user@1000.service/app.slice/run-r1.scope"), "run-r1.scope");
    EXPECT_EQ(systemd_unit("/"), "");
    EXPECT_EQ(systemd_unit("/kleak-test-12"), "");
}

}  // namespace
}  // namespace kleak::core
