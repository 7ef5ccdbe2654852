// Real-kernel tests of kleakd: run the real binary, make a deterministic
// "leak" by holding pipes open (each pipe allocates at alloc_pipe_info), and
// assert on the numbers kleakd reports.
#include <sys/utsname.h>

#include <nlohmann/json.hpp>

#include "kernel_test_support.h"

namespace {

using namespace kleak_test;
using nlohmann::json;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

TEST(KernelRecord, HeldPipesShowAsUnfreedAtAllocPipeInfo) {
    REQUIRE_KERNEL();
    const fs::path dir = Kleakd::make_temp_dir() / "rec";
    Kleakd recorder({"record", "--output", dir.string()});
    ASSERT_TRUE(recorder.wait_for_stderr("recording to")) << recorder.stop().err;

    HeldPipes pipes(kPipes);
    ASSERT_EQ(pipes.count(), kPipes);
    let_drain();
    const Result rec = recorder.stop();
    ASSERT_EQ(rec.exit_code, 0) << rec.err;

    const Result rep = run_to_end({"report", dir.string(), "--json"});
    ASSERT_EQ(rep.exit_code, 0) << rep.err;
    const json report = json::parse(rep.out);
    const FunctionTotals pipe = by_function(report, "alloc_pipe_info");
    // Each held pipe keeps at least one allocation made in alloc_pipe_info.
    EXPECT_GE(pipe.outstanding, static_cast<std::uint64_t>(kPipes)) << rep.out.substr(0, 2000);
    EXPECT_GE(pipe.allocs, static_cast<std::uint64_t>(kPipes));
    EXPECT_GT(pipe.outstanding_bytes, 0u);
    EXPECT_EQ(report.at("totals").at("dropped"), 0u);

    // The recording says where it came from.
    std::ifstream meta_in(dir / "meta.json");
    const json meta = json::parse(meta_in);
    utsname u{};
    ::uname(&u);
    EXPECT_EQ(meta.at("kernel_release"), std::string(u.release));
    std::ifstream boot("/proc/sys/kernel/random/boot_id");
    std::string boot_id;
    std::getline(boot, boot_id);
    EXPECT_EQ(meta.at("boot_id"), boot_id);
    EXPECT_EQ(meta.at("cpus").get<long>(), libbpf_num_possible_cpus());
    bool has_symbol = false;
    for (const auto& [addr, sym] : meta.at("symbols").items()) has_symbol |= sym.at("function") == "alloc_pipe_info";
    EXPECT_TRUE(has_symbol);

    // The text report names the site in its unfreed section.
    const Result text = run_to_end({"report", dir.string()});
    ASSERT_EQ(text.exit_code, 0);
    const auto unfreed = text.out.find("unfreed allocations by caller:");
    ASSERT_NE(unfreed, std::string::npos);
    EXPECT_NE(text.out.find("alloc_pipe_info+0x", unfreed), std::string::npos) << text.out;
    fs::remove_all(dir.parent_path());
}

TEST(KernelRecord, PipesOpenedAndClosedAreFreed) {
    REQUIRE_KERNEL();
    const fs::path dir = Kleakd::make_temp_dir() / "rec";
    Kleakd recorder({"record", "--output", dir.string()});
    ASSERT_TRUE(recorder.wait_for_stderr("recording to")) << recorder.stop().err;
    {
        HeldPipes pipes(kPipes);
        ASSERT_EQ(pipes.count(), kPipes);
        std::this_thread::sleep_for(50ms);
    }
    // Closing a pipe frees its buffers through RCU-free paths too: give them time.
    std::this_thread::sleep_for(500ms);
    const Result rec = recorder.stop();
    ASSERT_EQ(rec.exit_code, 0) << rec.err;

    const Result rep = run_to_end({"report", dir.string(), "--json"});
    ASSERT_EQ(rep.exit_code, 0) << rep.err;
    const FunctionTotals pipe = by_function(json::parse(rep.out), "alloc_pipe_info");
    EXPECT_GE(pipe.allocs, static_cast<std::uint64_t>(kPipes));
    EXPECT_GE(pipe.frees, static_cast<std::uint64_t>(kPipes));
    // Other processes may hold a few pipes of their own; ours are all gone.
    EXPECT_LT(pipe.outstanding, static_cast<std::uint64_t>(kPipes / 4));
    fs::remove_all(dir.parent_path());
}

TEST(KernelTrace, FinalJsonAndTextAgreeWithHeldPipes) {
    REQUIRE_KERNEL();
    json final_json;
    {
        // 100 rows: on a busy host (another kleakd, builds) 64 pipes' 64 KiB
        // need not be among the top 10 sites by bytes.
        Kleakd tracer({"trace", "--json", "--interval", "1", "--top", "100"});
        ASSERT_TRUE(tracer.wait_for_stderr("tracing kmem:kmalloc")) << tracer.stop().err;
        HeldPipes pipes(kPipes);
        let_drain();
        std::this_thread::sleep_for(1s);  // one live table
        const Result r = tracer.stop(SIGTERM);
        ASSERT_EQ(r.exit_code, 0) << r.err;
        // The live table went to stderr and already showed the site.
        EXPECT_NE(r.err.find("alloc_pipe_info+0x"), std::string::npos) << r.err;
        final_json = json::parse(r.out);
    }
    const FunctionTotals pipe = by_function(final_json, "alloc_pipe_info");
    EXPECT_GE(pipe.outstanding, static_cast<std::uint64_t>(kPipes));
    const auto& t = final_json.at("totals");
    EXPECT_EQ(t.at("outstanding").get<std::uint64_t>(),
              t.at("allocs").get<std::uint64_t>() - t.at("frees").get<std::uint64_t>() -
                  t.at("replaced").get<std::uint64_t>());

    Kleakd text_tracer({"trace", "--interval", "60", "--top", "100"});
    ASSERT_TRUE(text_tracer.wait_for_stderr("tracing kmem:kmalloc"));
    HeldPipes pipes(kPipes);
    let_drain();
    const Result text = text_tracer.stop();
    ASSERT_EQ(text.exit_code, 0) << text.err;
    const auto unfreed = text.out.find("unfreed allocations by caller:");
    ASSERT_NE(unfreed, std::string::npos) << text.out;
    EXPECT_NE(text.out.find("alloc_pipe_info+0x", unfreed), std::string::npos) << text.out;
}

TEST(KernelTrace, DetachLeavesNoProgramsBehind) {
    REQUIRE_KERNEL();
    // Another kleakd (an installed service, another test run) may trace too:
    // ours are the kleakd programs this tracer holds open.
    Kleakd tracer({"trace", "--interval", "60"});
    ASSERT_TRUE(tracer.wait_for_stderr("tracing kmem:kmalloc"));
    const std::set<__u32> held = programs_held_by(tracer.pid());
    std::map<__u32, std::string> ours;
    for (const auto& [id, name] : kleakd_programs_by_id())
        if (held.contains(id)) ours.emplace(id, name);
    // kmalloc, kfree, kmem_cache_alloc, kmem_cache_free (the *_node ones exist only before 6.1).
    EXPECT_GE(ours.size(), 4u) << ::testing::PrintToString(ours);
    ASSERT_EQ(tracer.stop().exit_code, 0);
    const auto after = kleakd_programs_by_id();
    for (const auto& [id, name] : ours)
        EXPECT_FALSE(after.contains(id)) << "program " << name << " (id " << id << ") left loaded";
}

TEST(KernelRecord, TinyBufferOverflowIsCountedAndAdvised) {
    REQUIRE_KERNEL();
    const fs::path dir = Kleakd::make_temp_dir() / "rec";
    // 16K (the smallest ring) holds a few hundred records; with no early
    // wake-up and a drain every 2 s the burst below must overflow it.
    Kleakd recorder({"record", "--output", dir.string(), "--buffer-size", "16K", "--drain-ms", "2000",
                     "--wakeup-backlog", "1073741824"});
    ASSERT_TRUE(recorder.wait_for_stderr("recording to")) << recorder.stop().err;
    for (int round = 0; round < 20; ++round) HeldPipes pipes(kPipes);
    const Result rec = recorder.stop();
    ASSERT_EQ(rec.exit_code, 0) << rec.err;
    EXPECT_NE(rec.err.find("dropped because a ring overflowed; try --buffer-size"), std::string::npos) << rec.err;

    const Result rep = run_to_end({"report", dir.string(), "--json"});
    ASSERT_EQ(rep.exit_code, 0) << rep.err;
    const json report = json::parse(rep.out);
    EXPECT_GT(report.at("losses").at("dropped").get<std::uint64_t>(), 0u);
    EXPECT_GT(report.at("losses").at("suggested_buffer_size").get<std::uint64_t>(), 16384u);
    const Result text = run_to_end({"report", dir.string()});
    EXPECT_NE(text.out.find("would have held the burst"), std::string::npos) << text.out;
    fs::remove_all(dir.parent_path());
}

// --- attach modes (README "Kernels") -------------------------------------------

std::string running_release() {
    utsname u{};
    ::uname(&u);
    return u.release;
}

// auto takes tp_btf where this kernel's verifier accepts kleakd's programs and
// raw_tp elsewhere, and says which; forcing tp_btf agrees with that choice:
// it loads, or fails naming the program and the verifier's words, and not
// privileges. The kernel matrix (tests/kernels) sets KLEAKD_EXPECT_ATTACH for
// kernels whose answer is known (raw_tp on Debian's 6.1 and 6.12).
TEST(KernelAttach, AutoSaysWhichModeAndForcingTpBtfAgreesWithIt) {
    REQUIRE_KERNEL();
    std::string chosen;
    {
        Kleakd tracer({"trace", "--interval", "60"});
        ASSERT_TRUE(tracer.wait_for_stderr("tracing kmem:kmalloc")) << tracer.stop().err;
        chosen = attach_mode_logged(tracer.stderr_text());
        ASSERT_EQ(tracer.stop().exit_code, 0);
    }
    std::cerr << "auto attached as " << chosen << " on Linux " << running_release() << "\n";
    ASSERT_TRUE(chosen == "tp_btf" || chosen == "raw_tp") << chosen;
    if (const char* expected = std::getenv("KLEAKD_EXPECT_ATTACH")) EXPECT_EQ(chosen, expected);

    Kleakd forced({"trace", "--attach", "tp_btf", "--interval", "60"});
    if (chosen == "tp_btf") {
        ASSERT_TRUE(forced.wait_for_stderr("tracing kmem:kmalloc")) << forced.stop().err;
        EXPECT_EQ(forced.stop().exit_code, 0);
        return;
    }
    const Result r = forced.wait_for(60s);
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_NE(r.err.find("the running kernel (Linux " + running_release() + ") refused BPF program kleak__"),
              std::string::npos)
        << r.err;
    EXPECT_NE(r.err.find("(tp_btf); its verifier says: "), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("This is not a permissions problem"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("--attach raw_tp"), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("sudo"), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("needs root"), std::string::npos) << r.err;
}

// The raw_tp programs (the only ones older kernels load) see what the tp_btf
// ones see: every held pipe's allocations at their sites, kmalloc and
// kmem_cache alike, and every closed pipe's frees.
TEST(KernelAttach, RawTpSeesHeldPipesAndFreesClosedOnes) {
    REQUIRE_KERNEL();
    const fs::path dir = Kleakd::make_temp_dir() / "rec";
    Kleakd recorder({"record", "--attach", "raw_tp", "--output", dir.string()});
    ASSERT_TRUE(recorder.wait_for_stderr("recording to")) << recorder.stop().err;
    EXPECT_EQ(attach_mode_logged(recorder.stderr_text()), "raw_tp");
    HeldPipes held(kPipes);
    ASSERT_EQ(held.count(), kPipes);
    {
        HeldPipes closed(kPipes);
        ASSERT_EQ(closed.count(), kPipes);
    }
    std::this_thread::sleep_for(500ms);  // RCU-deferred frees of the closed pipes
    const Result rec = recorder.stop();
    ASSERT_EQ(rec.exit_code, 0) << rec.err;

    const Result rep = run_to_end({"report", dir.string(), "--json"});
    ASSERT_EQ(rep.exit_code, 0) << rep.err;
    const json report = json::parse(rep.out);
    const auto n = static_cast<std::uint64_t>(kPipes);
    // A pipe makes one or more allocations at each site (alloc_pipe_info
    // allocates the pipe and its buffer array), the same for the held ones
    // and the closed ones: as many frees as outstanding. Other processes may
    // open and keep a few pipes meanwhile: a margin of n/2. A missed free
    // leaves frees short of outstanding; a missed allocation, outstanding
    // short of n.
    for (const char* function : {"alloc_pipe_info", "alloc_inode"}) {
        const FunctionTotals t = by_function(report, function);
        EXPECT_GE(t.allocs, 2 * n) << function << "\n" << rep.out.substr(0, 3000);
        EXPECT_GE(t.outstanding, n) << function;
        EXPECT_GE(t.frees, n) << function;
        EXPECT_LT(t.outstanding, t.frees + n / 2) << function;
    }
    EXPECT_EQ(report.at("totals").at("dropped"), 0u);
    fs::remove_all(dir.parent_path());
}

TEST(KernelErrors, UserMistakesGetOneClearLine) {
    REQUIRE_KERNEL();
    const Result bad_size = run_to_end({"trace", "--buffer-size", "3M"});
    EXPECT_EQ(bad_size.exit_code, 2);
    EXPECT_NE(bad_size.err.find("not a power of two"), std::string::npos) << bad_size.err;

    const Result unwritable = run_to_end({"record", "--output", "/proc/kleakd-cannot-write-here"});
    EXPECT_EQ(unwritable.exit_code, 1);
    EXPECT_NE(unwritable.err.find("/proc/kleakd-cannot-write-here"), std::string::npos) << unwritable.err;

    const Result bad_attach = run_to_end({"trace", "--attach", "fentry"});
    EXPECT_EQ(bad_attach.exit_code, 2);
    EXPECT_NE(bad_attach.err.find("'fentry' is not an attach mode: auto, tp_btf or raw_tp"), std::string::npos)
        << bad_attach.err;

    const Result not_recording = run_to_end({"report", "/tmp"});
    EXPECT_EQ(not_recording.exit_code, 1);
    EXPECT_NE(not_recording.err.find("meta.json"), std::string::npos) << not_recording.err;
}

TEST(KernelErrors, UnprivilegedUserIsToldToUseRoot) {
    REQUIRE_KERNEL();
    // Drop to nobody in a child and run kleakd there.
    const pid_t pid = ::fork();
    if (pid == 0) {
        const fs::path err = "/tmp/kleakd-unpriv.err";
        const int fd = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0666);
        ::dup2(fd, 2);
        if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(99);
        ::execl(KLEAKD_BINARY, KLEAKD_BINARY, "trace", nullptr);
        ::_exit(127);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 1);
    std::ifstream in("/tmp/kleakd-unpriv.err");
    const std::string err{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    EXPECT_NE(err.find("needs root"), std::string::npos) << err;
    fs::remove("/tmp/kleakd-unpriv.err");
}

}  // namespace
