// Real-kernel tests of the per-CPU record batches (kleak.bpf.c): records
// wait in their CPU's batch until it fills, ages, or user space flushes it,
// so these check that a flush delivers exactly what a CPU holds, that the
// per-CPU `pending` flags let a drain's flush skip CPUs with empty batches
// and no others, that a CPU going offline pushes its batch into its ring on
// the way down, that the small ring of a CPU offline at start wakes its
// consumer, that the batched stream still decodes and keeps each CPU's
// records in time order, that frees which take no clock reading carry
// their batch's previous one and are closed by a later one, and that nested
// kmem_cache_free events are accounted for; and that a tracer's links and
// maps, held as systemd's fd store holds them, keep the programs attached
// after it is gone and are adopted by the next one (kernel/bpf_handover.h).
// Counts and order only: nothing here asserts on timing.
#include <fcntl.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "core/event.h"
#include "kleak_abi.h"
#include "core/symbolizer.h"
#include "kernel/bpf_tracer.h"
#include "kernel/event_loop.h"
#include "kernel/kallsyms_file.h"
#include "kernel/ring_consumer.h"
#include "kernel/ring_readers.h"
#include "kernel/wake_fd.h"
#include "kernel_test_support.h"

namespace {

using namespace kleak_test;

// Decodes every record into memory, per CPU, in ring order.
class CollectingSink final : public kleak::RecordSink {
public:
    explicit CollectingSink(unsigned cpus) : per_cpu(cpus) {}
    void on_record(unsigned cpu, std::span<const std::byte> record) override {
        kleak::core::Event e;
        if (kleak::core::decode_record(record, static_cast<std::uint16_t>(cpu), e) != kleak::core::DecodeStatus::ok) {
            ++undecodable;
            return;
        }
        per_cpu.at(cpu).push_back(e);
    }
    void clear() {
        for (auto& events : per_cpu) events.clear();
    }
    std::vector<std::vector<kleak::core::Event>> per_cpu;
    std::uint64_t undecodable = 0;
};

// Pipes made and closed in a burst: ~200 KiB of records, a dozen times a small ring.
constexpr int kBurstPipes = 1000;

kleak::TracerOptions small_tracer() {
    kleak::TracerOptions options;
    options.buffer_size = 16u << 20;
    return options;
}

// Allocations made in alloc_pipe_info, per CPU.
std::map<unsigned, int> pipe_allocations(const CollectingSink& sink, kleak::core::Symbolizer& symbols) {
    std::map<unsigned, int> found;
    for (unsigned cpu = 0; cpu < sink.per_cpu.size(); ++cpu)
        for (const auto& e : sink.per_cpu[cpu])
            if (kleak::core::is_alloc(e.kind) && symbols.resolve(e.call_site).function == "alloc_pipe_info")
                ++found[cpu];
    return found;
}

// A tracer with small rings, a sink collecting what its rings hold, and
// names for call sites: what the pinned-CPU tests share.
struct Traced {
    kleak::BpfTracer tracer{small_tracer()};
    CollectingSink sink{tracer.cpu_count()};
    kleak::RingConsumer consumer{tracer.ring_fds(), sink};
    std::unique_ptr<kleak::core::CachingSymbolizer> symbols = kleak::make_kallsyms_symbolizer(kleak::kProcKallsyms);

    // Flushes every CPU's batch, drains, forgets: from here the sink sees only
    // what comes after. False if the flush or the drain failed.
    bool start_empty() {
        if (tracer.flush_all_batches() != 0 || consumer.drain() < 0) return false;
        sink.clear();
        return true;
    }
    int pipe_allocations_on(unsigned cpu) { return pipe_allocations(sink, *symbols)[cpu]; }
};

TEST(KernelBatching, FlushDeliversEverythingACpuHolds) {
    REQUIRE_KERNEL();
    Traced t;
    auto& [tracer, sink, consumer, symbols] = t;
    const unsigned cpu = last_online_cpu();
    PinnedToCpu pinned(cpu);
    ASSERT_TRUE(pinned.ok()) << "cannot pin the test to CPU " << cpu;

    // Two allocations per pipe in alloc_pipe_info (pipe_inode_info and its
    // buffers), all on the pinned CPU, all out after one flush and drain:
    // exactly that, and nothing on another CPU. Records carry no pid, so
    // another process making pipes meanwhile (a build, another kleakd's
    // clients) adds to the count: up to three tries, each from an empty
    // start. A record the flush misses is missed on every try.
    constexpr int kFew = 3;  // a few records: far from filling a 4 KiB batch
    const std::map<unsigned, int> expected{{cpu, 2 * kFew}};
    std::string tries;
    bool exact = false;
    for (int attempt = 0; attempt < 3 && !exact; ++attempt) {
        ASSERT_TRUE(t.start_empty());
        HeldPipes pipes(kFew);
        ASSERT_EQ(pipes.count(), kFew);
        ASSERT_GE(consumer.drain(), 0);
        const int before_flush = t.pipe_allocations_on(cpu);
        ASSERT_EQ(tracer.flush_batches(), 0);
        ASSERT_GE(consumer.drain(), 0);
        const auto after_flush = pipe_allocations(sink, *symbols);
        exact = after_flush == expected;
        tries += " [" + ::testing::PrintToString(after_flush) + ", " + std::to_string(before_flush) +
                 " before the flush]";
    }
    EXPECT_TRUE(exact) << "pipe allocations per CPU after the flush, expected {" << cpu << ": " << 2 * kFew
                       << "}:" << tries;
    EXPECT_EQ(sink.undecodable, 0u);
    std::cerr << "tries (pipe allocations per CPU after the flush, and before it):" << tries << "\n";
}

// kleak.bpf.c's `pending` flag, read through the daemon's mapping: set while
// a CPU's batch holds records, so that flush_batches() finds that CPU, and
// cleared by the flush. The kernel allocates on every CPU all the time, so
// neither "reads 1 after our pipes" nor "reads 0 after a flush" holds at any
// one instant: the assertions are what the flag promises instead.
TEST(KernelBatching, PendingFlagIsSetWhileACpuHoldsRecordsAndClearedByItsFlush) {
    REQUIRE_KERNEL();
    Traced t;
    auto& [tracer, sink, consumer, symbols] = t;
    ASSERT_TRUE(tracer.pending_flags_mapped());
    const unsigned cpu = last_online_cpu();
    PinnedToCpu pinned(cpu);
    ASSERT_TRUE(pinned.ok()) << "cannot pin the test to CPU " << cpu;
    ASSERT_TRUE(t.start_empty());

    constexpr int kFew = 3;  // far from filling a 4 KiB batch
    HeldPipes pipes(kFew);
    ASSERT_EQ(pipes.count(), kFew);
    // Read before draining: a flag reading 0 promises that no record made
    // before the read waits in the batch, so the drain must find them all.
    const bool pending = tracer.batch_pending(cpu);
    ASSERT_GE(consumer.drain(), 0);
    const int before_flush = t.pipe_allocations_on(cpu);
    // (At least: another process's pipes made on this CPU meanwhile count too.)
    EXPECT_TRUE(pending || before_flush >= 2 * kFew)
        << "the flag read 0 while the batch held " << 2 * kFew - before_flush << " pipe allocations";

    // flush_batches() skips CPUs whose flag reads 0: it must still deliver them.
    ASSERT_EQ(tracer.flush_batches(), 0);
    ASSERT_GE(consumer.drain(), 0);
    EXPECT_GE(t.pipe_allocations_on(cpu), 2 * kFew) << "seen before the flush: " << before_flush;

    // This CPU's flag right after its flush: 0 unless the kernel recorded
    // something here in between. A flush that left it set would read 1 on
    // every try.
    const std::uint64_t flushed = tracer.flushed_cpus(), skipped = tracer.skipped_cpus();
    int calls = 0;
    bool seen_clear = false;
    while (calls < 1000 && !seen_clear) {
        ASSERT_EQ(tracer.flush_batches(), 0);
        ++calls;
        seen_clear = !tracer.batch_pending(cpu);
    }
    EXPECT_TRUE(seen_clear) << "CPU " << cpu << "'s flag read 1 after each of " << calls << " flushes";
    EXPECT_EQ(tracer.flushed_cpus() - flushed + tracer.skipped_cpus() - skipped,
              std::uint64_t{tracer.cpu_count()} * static_cast<std::uint64_t>(calls))
        << "each call flushes or skips each CPU once";
    std::cerr << "flag after the pipes: " << pending
              << "; pipe allocations in the ring before the flush: " << before_flush << " of " << 2 * kFew
              << "; flushes until the flag read 0: " << calls << "\n";
}


// kleak__flush cannot run on an offline CPU (ENXIO), so a CPU must push its
// batch into its ring itself on its way down (kleak__cpu_down), and clear its
// `pending` flag, or its records would wait for it to come back and every
// drain would try it again. Nothing here runs kleak__flush after the pipes:
// what reaches the ring got there by a full or aged batch, or on the way
// down. The teardown (20-40 ms here) allocates on CPU 1 itself, so an age
// flush usually carries the pipes out even without kleak__cpu_down; what it
// cannot do is empty the batch after the teardown's own last records, so the
// flag is what fails without the program (it read 1 each time). The count
// checks that the way down loses and duplicates nothing.
TEST(KernelBatching, CpuGoingOfflinePushesItsBatchIntoItsRing) {
    REQUIRE_KERNEL();
    constexpr unsigned kCpu = 1;
    SKIP_UNLESS_CPU1_CAN_GO_OFFLINE();

    Traced t;
    auto& [tracer, sink, consumer, symbols] = t;
    ASSERT_TRUE(tracer.flushes_offline_cpus()) << "kleak__cpu_down is not attached (cpuhp:cpuhp_enter missing?)";
    ASSERT_TRUE(tracer.pending_flags_mapped());

    constexpr int kFew = 3;  // 6 allocations: far from filling a 4 KiB batch
    std::optional<HeldPipes> pipes;
    {
        PinnedToCpu pinned(kCpu);
        ASSERT_TRUE(pinned.ok()) << "cannot pin the test to CPU " << kCpu;
        ASSERT_TRUE(t.start_empty());
        pipes.emplace(kFew);
        ASSERT_EQ(pipes->count(), kFew);
    }
    // Off CPU 1 before it goes: the pipes stay open, nothing of ours runs there.
    PinnedToCpu away(0);
    ASSERT_TRUE(away.ok()) << "cannot move the test to CPU 0";
    ASSERT_GE(consumer.drain(), 0);
    const int before_offline = t.pipe_allocations_on(kCpu);

    const auto start = std::chrono::steady_clock::now();
    Cpu1Offline offline;
    if (offline.error() == EOPNOTSUPP || offline.error() == EPERM || offline.error() == EACCES)
        SKIP_LOUDLY(std::string("writing 0 to ") + kCpu1Online + " failed: " + std::strerror(offline.error()));
    ASSERT_EQ(offline.error(), 0) << "taking CPU 1 offline failed: " << std::strerror(offline.error());
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
    ASSERT_EQ(read_cpu1_online(), "0");

    // No kleak__flush: only the way down can have put the rest in the ring.
    bool pending = tracer.batch_pending(kCpu);
    ASSERT_GE(consumer.drain(), 0);
    // At least ours: another process may make pipes on CPU 1 meanwhile.
    EXPECT_GE(t.pipe_allocations_on(kCpu), 2 * kFew)
        << "in CPU 1's ring before it went offline: " << before_offline;
    EXPECT_EQ(sink.undecodable, 0u);
    EXPECT_EQ(offline.online_again(), 0) << "bringing CPU 1 back online failed";
    EXPECT_EQ(read_cpu1_online(), "1");
    // The last flush runs at the dying CPU's last step; its stopper and idle
    // tasks may still allocate after it (seen once on 6.12 under qemu). Two
    // more tries: without kleak__cpu_down the flag read 1 every time.
    for (int retry = 0; pending && retry < 2; ++retry) {
        Cpu1Offline again;
        ASSERT_EQ(again.error(), 0) << "taking CPU 1 offline failed: " << std::strerror(again.error());
        pending = tracer.batch_pending(kCpu);
        ASSERT_GE(consumer.drain(), 0);
        EXPECT_EQ(again.online_again(), 0) << "bringing CPU 1 back online failed";
    }
    EXPECT_FALSE(pending) << "CPU 1 went offline with its flag set, three times: its batch still holds records";
    std::cerr << "pipe allocations in CPU 1's ring before it went offline: " << before_offline << " of " << 2 * kFew
              << "; going offline took " << took.count() << " ms\n";
}

// A CPU offline at start has a 16K ring until the daemon's second timer
// grows it. That ring must wake its consumer (at every batch: it holds four):
// the full rings' mark (a quarter of buffer_size, 1M here) is never reached
// in it, so until the timer grew it only the 100 ms drain emptied it, and a
// burst on a CPU that had just come online dropped nearly all of itself.
// Here nothing grows the ring (no TracingSession) and there is no drain
// timer: as in the daemon, a loop (on CPU 0) drains when the ring or a
// reader wakes it. Without the small mark the ring woke the loop 0-1 times
// (1: data already there when the loop starts watching), 500-1,400 records
// were handed on and 17,000-125,000 dropped; with it, 35-340 wake-ups and
// 0-10,000 dropped of ~18,000 (20:00 UTC, load 3-5). The drops are printed,
// not asserted: the ring and its reader's copies (32K) last a few ms at a
// burst's rate, less than a loaded 2-CPU host may keep the loop waiting.
TEST(KernelBatching, ACpusSmallRingWakesItsConsumer) {
    REQUIRE_KERNEL();
    constexpr unsigned kCpu = 1;
    SKIP_UNLESS_CPU1_CAN_GO_OFFLINE();

    std::optional<kleak::BpfTracer> tracer;
    {
        Cpu1Offline offline;
        ASSERT_EQ(offline.error(), 0) << "taking CPU 1 offline failed: " << std::strerror(offline.error());
        kleak::TracerOptions options;
        options.buffer_size = 4u << 20;
        tracer.emplace(options);
        ASSERT_EQ(offline.online_again(), 0) << "bringing CPU 1 back online failed";
    }
    ASSERT_EQ(tracer->ring_bytes().at(kCpu), kleak::kOfflineRingBytes);
    CollectingSink sink(tracer->cpu_count());
    kleak::RingConsumer consumer(tracer->ring_fds(), sink);
    PinnedToCpu away(0);
    ASSERT_TRUE(away.ok()) << "cannot move the test to CPU 0";
    ASSERT_EQ(tracer->flush_all_batches(), 0);
    ASSERT_GE(consumer.drain(), 0);
    sink.clear();
    const std::uint64_t dropped_before = tracer->read_drops().at(kCpu);

    std::uint64_t drains = 0;      // by the ring's wake-ups or a reader's
    std::uint64_t ring_wakes = 0;  // CPU 1's ring woke the loop
    {
        // The reader and the loop at kleakd's nice -10 (threads inherit it):
        // on a busy host they must preempt more than the burst.
        const int old_nice = ::getpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()));
        ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), -10);
        kleak::RingReaders readers(consumer, tracer->ring_fds());
        kleak::EventLoop loop;
        kleak::WakeFd stop;
        const auto drain = [&] {
            ++drains;
            consumer.drain();
        };
        loop.watch(
            tracer->ring_fds().at(kCpu),
            [&] {
                ++ring_wakes;
                drain();
            },
            kleak::EventLoop::Trigger::edge);
        loop.watch(readers.notify().fd(), [&] {
            readers.notify().lower();
            drain();
        });
        loop.watch(stop.fd(), [&] { loop.stop(); });
        std::thread loop_thread([&] { loop.run(); });
        ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), old_nice);

        // Records on CPU 1 from a thread at nice 10, so that the reader
        // there runs when woken.
        std::thread burst([&] {
            PinnedToCpu pinned(kCpu);
            if (!pinned.ok()) return;
            ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 10);
            // Paced: wake-ups that come while the loop still drains the
            // last one are one edge, so an unpaced burst counted 2-340
            // of them by the loop's speed alone.
            for (int i = 0; i < kBurstPipes; ++i) {
                HeldPipes churn(1);
                if (i % 20 == 19) std::this_thread::sleep_for(2ms);
            }
        });
        burst.join();
        std::this_thread::sleep_for(50ms);  // a consumer woken at the end drains
        stop.raise();
        loop_thread.join();
    }
    ASSERT_EQ(tracer->ring_bytes().at(kCpu), kleak::kOfflineRingBytes) << "the ring grew: the test tests nothing";
    ASSERT_EQ(tracer->flush_all_batches(), 0);
    ASSERT_GE(consumer.drain(), 0);

    const std::uint64_t dropped = tracer->read_drops().at(kCpu) - dropped_before;
    const std::uint64_t handed_on = sink.per_cpu.at(kCpu).size();
    std::cerr << "[ small    ] " << kBurstPipes << " pipes on CPU 1's 16K ring: " << handed_on << " records handed on, "
              << dropped << " dropped; the ring woke the loop " << ring_wakes
              << " times, " << drains << " drains in all\n";
    // Without the mark the ring never wakes the loop (0-1 seen); with it,
    // at least one edge in most of the burst's 50 pauses.
    EXPECT_GE(ring_wakes, 10u) << "CPU 1's small ring did not wake its consumer";
    EXPECT_EQ(sink.undecodable, 0u);
}

// With emit_records off the programs stay attached but never write a batch,
// so no flag is ever set: every drain's flush must leave every CPU alone
// (no IPI), whatever the machine is doing. flush_all_batches() still runs
// on each. Counts only: this cannot depend on what else the kernel does.
TEST(KernelBatching, FlushSkipsEveryCpuWhoseBatchIsEmpty) {
    REQUIRE_KERNEL();
    kleak::TracerOptions options = small_tracer();
    options.emit_records = false;
    kleak::BpfTracer tracer(options);
    ASSERT_TRUE(tracer.pending_flags_mapped());
    const std::uint64_t cpus = tracer.cpu_count();
    const std::uint64_t online = online_cpu_set().size();  // an offline CPU is not flushed, nor counted

    const std::uint64_t flushed = tracer.flushed_cpus(), skipped = tracer.skipped_cpus();
    EXPECT_EQ(flushed, online) << "start-up flushes every online CPU once";
    EXPECT_EQ(skipped, 0u);
    constexpr int kDrains = 50;
    for (int i = 0; i < kDrains; ++i) {
        { HeldPipes churn(4); }  // allocations that would fill a batch were records written
        ASSERT_EQ(tracer.flush_batches(), 0);
    }
    EXPECT_EQ(tracer.flushed_cpus() - flushed, 0u);
    EXPECT_EQ(tracer.skipped_cpus() - skipped, kDrains * cpus);
    for (unsigned cpu = 0; cpu < cpus; ++cpu) EXPECT_FALSE(tracer.batch_pending(cpu)) << "CPU " << cpu;

    ASSERT_EQ(tracer.flush_all_batches(), 0);
    EXPECT_EQ(tracer.flushed_cpus() - flushed, online);
    EXPECT_EQ(tracer.skipped_cpus() - skipped, kDrains * cpus);
}

// writev() of 16 iovecs copies them into a kmalloc'd array and kfrees it:
// one allocation, then its free, per call, on the calling CPU.
void writev_churn(int calls) {
    const int fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (fd < 0) return;
    char byte = 0;
    iovec iov[16];
    for (auto& v : iov) v = {&byte, 1};
    for (int i = 0; i < calls; ++i) (void)!::writev(fd, iov, 16);
    ::close(fd);
}

TEST(KernelBatching, FreesWithoutAClockReadingCarryTheirBatchsLastOneAndAreClosedByALaterOne) {
    REQUIRE_KERNEL();
    Traced t;
    auto& [tracer, sink, consumer, symbols] = t;
    const unsigned cpu = last_online_cpu();
    {
        PinnedToCpu pinned(cpu);
        ASSERT_TRUE(pinned.ok()) << "cannot pin the test to CPU " << cpu;
        ASSERT_TRUE(t.start_empty());
        writev_churn(20'000);
    }
    ASSERT_EQ(tracer.flush_all_batches(), 0);
    ASSERT_GE(consumer.drain(), 0);
    EXPECT_EQ(sink.undecodable, 0u);

    using kleak::core::EventKind;
    const auto& events = sink.per_cpu[cpu];
    const auto flagged = [](const kleak::core::Event& e) {
        return kleak::core::is_free(e.kind) && (e.gfp_flags & KLEAK_TS_LOWER_BOUND) != 0;
    };
    std::uint64_t frees = 0, lower_bound_frees = 0, marks = 0, without_a_reading_before = 0, unclosed = 0;
    std::uint64_t longest_run = 0, run = 0;
    std::set<std::uint64_t> readings;  // every clock reading seen so far on this CPU
    for (std::size_t i = 0; i < events.size(); ++i) {
        const auto& e = events[i];
        marks += e.kind == EventKind::time_mark;
        frees += kleak::core::is_free(e.kind);
        if (!flagged(e)) {
            readings.insert(e.ts_ns);
            run = 0;
            continue;
        }
        ++lower_bound_frees;
        longest_run = std::max(longest_run, ++run);
        // Its time is a reading its CPU took before it ...
        if (!readings.contains(e.ts_ns)) ++without_a_reading_before;
        // ... and a record with a reading of its own, no earlier, follows.
        const auto next = std::find_if(events.begin() + static_cast<std::ptrdiff_t>(i) + 1, events.end(),
                                       [&](const auto& n) { return !flagged(n); });
        if (next == events.end() || next->ts_ns < e.ts_ns) ++unclosed;
    }
    // Nearly every writev kfree follows its kmalloc in the same batch, so
    // most frees skip the clock.
    EXPECT_GE(frees, 20'000u);
    EXPECT_GE(lower_bound_frees * 2, frees) << lower_bound_frees << " of " << frees;
    EXPECT_GE(marks, 1u);
    EXPECT_EQ(without_a_reading_before, 0u);
    EXPECT_EQ(unclosed, 0u);
    EXPECT_LE(longest_run, static_cast<std::uint64_t>(KLEAK_FREES_PER_STAMP));
    std::cerr << frees << " frees, " << lower_bound_frees << " without a clock reading, " << marks
              << " time marks, longest run " << longest_run << "\n";
}

TEST(KernelBatching, BatchedStreamDecodesAndEachCpuIsInTimeOrder) {
    REQUIRE_KERNEL();
    kleak::BpfTracer tracer(small_tracer());
    CollectingSink sink(tracer.cpu_count());
    kleak::RingConsumer consumer(tracer.ring_fds(), sink);

    // Pipe churn on every CPU: many full batches, flushes by age and by
    // user space, and frees from RCU callbacks in softirq that interrupt the
    // programs and so take the direct (unbatched) path into the same ring.
    std::vector<std::thread> workers;
    for (unsigned cpu = 0; cpu < tracer.cpu_count(); ++cpu) {
        workers.emplace_back([cpu]() {
            PinnedToCpu pinned(cpu);
            const auto end = std::chrono::steady_clock::now() + 1500ms;
            // Short pauses leave the draining thread CPU time: this test is
            // about what arrives, not about overflow (test_kernel has that).
            while (std::chrono::steady_clock::now() < end) {
                { HeldPipes churn(16); }
                std::this_thread::sleep_for(50us);
            }
        });
    }
    const auto end = std::chrono::steady_clock::now() + 1600ms;
    while (std::chrono::steady_clock::now() < end) {
        std::this_thread::sleep_for(20ms);
        EXPECT_EQ(tracer.flush_batches(), 0);
        EXPECT_GE(consumer.drain(), 0);
    }
    for (auto& w : workers) w.join();
    tracer.detach();
    ASSERT_EQ(tracer.flush_all_batches(), 0);
    ASSERT_GE(consumer.drain(), 0);

    EXPECT_EQ(sink.undecodable, 0u);
    std::uint64_t total = 0, inversions = 0;
    for (const auto& events : sink.per_cpu) {
        total += events.size();
        // A record that interrupted a program holding the batch goes to the
        // ring directly, ahead of the batch's older records: the only way a
        // CPU's stream may step back in time. So each backward step is short
        // (at most one batch of records) and rare.
        for (std::size_t i = 1; i < events.size(); ++i)
            if (events[i].ts_ns < events[i - 1].ts_ns) ++inversions;
    }
    EXPECT_GE(total, 100'000u);
    EXPECT_LT(inversions * 100, total) << inversions << " backward steps in " << total << " records";

    // A kmem_cache_free the kernel skipped the primary program for is either
    // recorded by the nested program or reported lost: reported losses are
    // the kernel's skips less what the nested program recorded.
    for (const kleak::ProgramStats& p : tracer.program_stats()) {
        if (p.name != "kmem:kmem_cache_free") continue;
        // The nested program records (nearly) every event the kernel skipped
        // the primary for. Recording more than that would mean events recorded
        // by both programs: measured 0-5 per ~1,000 on the host, 6 of 232 and
        // 5 of 66 on 6.12 under qemu (interrupts land at other places there),
        // so allow 5 % + 8.
        const std::uint64_t skipped = p.kernel_recursion_misses;
        EXPECT_GE(p.recovered * 100 + 800, skipped * 95) << "most nested events recovered";
        EXPECT_LE(p.recovered * 100, skipped * 105 + 800) << "few events recorded twice";
        EXPECT_EQ(p.recursion_misses, skipped - std::min(skipped, p.recovered));
        std::cerr << "kmem_cache_free: the kernel skipped " << p.kernel_recursion_misses << " nested runs, "
                  << p.recovered << " recorded by the nested program, " << p.recursion_misses << " lost\n";
    }
}

// What systemd's fd store would hold for `tracer`: a dup of each of its
// maps and links (service/fd_store.h queues them in a socket).
std::vector<kleak::NamedFd> store_of(const kleak::BpfTracer& tracer) {
    std::vector<kleak::NamedFd> store;
    for (const auto& [name, fd] : tracer.handover_fds())
        store.push_back({name, kleak::UniqueFd(::fcntl(fd, F_DUPFD_CLOEXEC, 3))});
    return store;
}

// What systemd hands a restarted process: copies, the store keeps its own.
kleak::Handover handed(const std::vector<kleak::NamedFd>& store, const std::string& identity) {
    std::vector<kleak::NamedFd> copies;
    for (const kleak::NamedFd& f : store)
        copies.push_back({f.name, kleak::UniqueFd(::fcntl(f.fd.get(), F_DUPFD_CLOEXEC, 3))});
    return kleak::Handover(std::move(copies), identity);
}

std::set<std::uint32_t> link_ids(const std::vector<std::pair<std::string, int>>& fds) {
    std::set<std::uint32_t> ids;
    for (const auto& [name, fd] : fds) {
        if (!name.starts_with(kleak::link_fd_name(""))) continue;
        bpf_link_info info{};
        __u32 len = sizeof info;
        if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0) ids.insert(info.id);
    }
    return ids;
}

bool link_exists(std::uint32_t id) { return static_cast<bool>(kleak::UniqueFd(bpf_link_get_fd_by_id(id))); }

// A restart through the fd store: the programs never detach, and what they
// wrote while no tracer existed (pipes made then) is in the rings the next
// tracer adopts. A tracer of another configuration replaces them instead.
TEST(KernelHandover, AdoptedProgramsStayAttachedAndTheirRingsKeepWhatWasWrittenMeanwhile) {
    REQUIRE_KERNEL();
    std::vector<kleak::NamedFd> store;
    std::set<std::uint32_t> links;
    std::string identity;
    {
        kleak::BpfTracer first(small_tracer());
        EXPECT_EQ(first.continuity(), kleak::Continuity::fresh);
        store = store_of(first);
        identity = first.identity();
        links = link_ids(first.handover_fds());
        ASSERT_GE(links.size(), 3u);
        CollectingSink sink(first.cpu_count());
        kleak::RingConsumer consumer(first.ring_fds(), sink);
        ASSERT_EQ(first.flush_all_batches(), 0);
        ASSERT_GE(consumer.drain(), 0);  // the next tracer sees only what comes after
    }
    for (const std::uint32_t id : links) EXPECT_TRUE(link_exists(id)) << "link " << id << " detached with its tracer";
    HeldPipes pipes(kPipes);  // while no tracer exists
    ASSERT_EQ(pipes.count(), kPipes);

    kleak::BpfTracer second(small_tracer(), handed(store, identity));
    ASSERT_EQ(second.continuity(), kleak::Continuity::adopted) << second.handover_refusal();
    EXPECT_EQ(link_ids(second.handover_fds()), links) << "no new link";
    CollectingSink sink(second.cpu_count());
    kleak::RingConsumer consumer(second.ring_fds(), sink);
    ASSERT_EQ(second.flush_all_batches(), 0);
    ASSERT_GE(consumer.drain(), 0);
    const auto symbols = kleak::make_kallsyms_symbolizer(kleak::kProcKallsyms);
    int made_meanwhile = 0;
    for (const auto& [cpu, n] : pipe_allocations(sink, *symbols)) made_meanwhile += n;
    // Two allocations a pipe; other processes' pipes only add.
    EXPECT_GE(made_meanwhile, 2 * kPipes) << "pipes made while no tracer existed, read from the adopted rings";
    EXPECT_EQ(sink.undecodable, 0u);

    kleak::TracerOptions other = small_tracer();
    other.buffer_size /= 2;
    kleak::BpfTracer third(other, handed(store, identity));
    EXPECT_EQ(third.continuity(), kleak::Continuity::replaced);
    EXPECT_NE(third.handover_refusal().find("this kleakd loads"), std::string::npos) << third.handover_refusal();
    std::set<std::uint32_t> shared;
    const std::set<std::uint32_t> third_links = link_ids(third.handover_fds());
    std::set_intersection(third_links.begin(), third_links.end(), links.begin(), links.end(),
                          std::inserter(shared, shared.begin()));
    EXPECT_TRUE(shared.empty()) << "a replacing tracer attaches links of its own";
    EXPECT_EQ(third_links.size(), links.size());

    // The store emptied (systemctl stop) and the adopting tracer gone: no link left.
    store.clear();
    second.detach();
    for (const std::uint32_t id : links) EXPECT_FALSE(link_exists(id)) << "link " << id << " still attached";
}

}  // namespace
