// `kleakd report`'s fast path (frames decoded in bulk by Pipeline::on_frames,
// merged into chunks, tracked on a second thread by TrackingThread) against
// the reference path (one on_record() per frame, tracked on the merging
// thread, the reader loop as it was): identical reports, late and record
// counts, on a recording large enough to take several merge rounds, with
// in-CPU inversions, late records, undecodable frames, printk records, and
// (ABI 2) frees stamped late with the time marks that close their windows.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <span>
#include <vector>

#include "app/recording_io.h"
#include "app/tracking_thread.h"
#include "core/record_batch.h"
#include "core/recording_format.h"
#include "core/report.h"
#include "kleak_abi.h"
#include "test_helpers.h"

namespace kleak {
namespace {

using core::Event;
using core::EventKind;

const std::filesystem::path kFixture = std::filesystem::path(KLEAK_FIXTURES_DIR) / "recording-pipes";

using test::Prng;

// ~6 MB per CPU file (several merge rounds: kReplaySliceBytes each), 2 CPUs.
std::filesystem::path write_recording(const std::string& name) {
    const std::filesystem::path dir = std::filesystem::temp_directory_path() /
                                      ("kleakd-threaded-replay-" + name + "-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    constexpr unsigned kCpus = 2;
    RecordingWriter writer(dir, kCpus);
    Prng rng(11);
    std::uint64_t marks = 0;
    std::vector<std::uint64_t> live;
    std::uint64_t ts = 1'000'000, next_ptr = 0xffff888000000000;
    // Each CPU's latest clock reading: what a free that reads none carries.
    std::vector<std::uint64_t> reading(kCpus, ts);
    for (int i = 0; i < 300'000; ++i) {
        ts += 1 + rng.below(200);
        const auto cpu = static_cast<std::uint16_t>(rng.below(kCpus));
        // A record committed a little out of order within its CPU, sometimes
        // far enough to be late behind the holdback.
        const std::uint64_t when = rng.below(50) == 0 ? ts - rng.below(3'000'000) : ts;
        std::vector<std::byte> bytes;
        const auto roll = rng.below(100);
        bool stamped_late = false;
        if (roll < 2) {
            bytes = test::printk_record({.ts = when, .text = "<6>a kernel line\n", .tgid = 1, .tid = 2});
        } else if (roll < 3) {
            bytes = test::encode_event(test::free_event({.ts = when, .ptr = 1}));
            bytes.resize(20);  // undecodable
        } else if (roll < 55 || live.empty()) {
            const std::uint64_t ptr = rng.below(4) == 0 && !live.empty() ? live[rng.below(live.size())] : (next_ptr += 64);
            live.push_back(ptr);
            bytes = test::encode_event(test::alloc_event({.ts = when, .cpu = cpu, .ptr = ptr,
                                                          .site = 0xffffffff81000000 + rng.below(300) * 64,
                                                          .req = static_cast<std::uint32_t>(1 + rng.below(900)),
                                                          .alloc = 1024, .kind = rng.below(2) ? EventKind::kmalloc
                                                                                              : EventKind::cache_alloc}));
        } else {
            // Often the newest allocation: freed soon, maybe on the other
            // CPU, maybe just after its pointer was taken again.
            const std::size_t k = rng.below(4) == 0 ? live.size() - 1 : rng.below(live.size());
            const std::uint64_t ptr = rng.below(20) == 0 ? 0xdead0000 + rng.below(1000) : live[k];
            live[k] = live.back();
            live.pop_back();
            // Half the frees read no clock; a third of those end their batch
            // with a mark, the rest wait for the CPU's next record with a
            // reading (possibly in a later merge round).
            stamped_late = rng.below(2) == 0;
            bytes = test::encode_event(test::free_event(
                {.ts = stamped_late ? reading[cpu] : when, .cpu = cpu, .ptr = ptr,
                 .site = 0xffffffff82000000 + rng.below(50) * 64,
                 .flags = static_cast<std::uint16_t>(stamped_late ? KLEAK_TS_LOWER_BOUND : 0)}));
            if (stamped_late && rng.below(3) == 0) {
                writer.on_record(cpu, bytes);
                bytes = test::time_mark_record(when);
                stamped_late = false;  // the mark is a reading
                ++marks;
            }
        }
        if (!stamped_late) reading[cpu] = when;
        writer.on_record(cpu, bytes);
        if (i % 10'000 == 0) writer.flush();
    }
    core::RecordingMeta meta;
    meta.abi_version = KLEAK_ABI_VERSION;
    meta.kleakd_version = "test";
    meta.cpus = kCpus;
    meta.buffer_size = 8 << 20;
    meta.dropped_per_cpu.assign(kCpus, 0);
    core::FixedSymbolizer symbols({});
    EXPECT_TRUE(writer.finish(meta, symbols));
    EXPECT_GT(marks, 10'000u);
    // One record per iteration (undecodable ones included); the marks, written
    // as frames of their own, are not records.
    EXPECT_EQ(writer.records(), 300'000u);
    return dir;
}

// The reader loop as it was before the fast path: the same rounds and
// watermarks, one on_record() per frame.
void reference_replay(const std::filesystem::path& dir, const core::RecordingMeta& meta, core::Pipeline& pipeline,
                      std::uint64_t holdback_ns) {
    constexpr std::size_t kSlice = kReplaySliceBytes;
    std::vector<std::vector<std::byte>> files;
    std::vector<std::size_t> offsets(meta.cpus, core::kRecordingHeaderSize);
    for (unsigned cpu = 0; cpu < meta.cpus; ++cpu) {
        std::ifstream in(dir / core::cpu_file_name(cpu), std::ios::binary);
        std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        files.emplace_back(reinterpret_cast<const std::byte*>(chars.data()),
                           reinterpret_cast<const std::byte*>(chars.data()) + chars.size());
    }
    std::vector<bool> done(meta.cpus, false);
    bool any_open = true;
    while (any_open) {
        any_open = false;
        for (unsigned cpu = 0; cpu < meta.cpus; ++cpu) {
            if (done[cpu]) continue;
            const std::size_t end = std::min(files[cpu].size(), offsets[cpu] + kSlice);
            core::FrameReader reader(std::span(files[cpu]).subspan(offsets[cpu], end - offsets[cpu]));
            std::span<const std::byte> record;
            while (reader.next(record) == core::FrameStatus::ok) pipeline.on_record(cpu, record);
            offsets[cpu] += reader.consumed();
            if (end == files[cpu].size()) {
                done[cpu] = true;
            } else {
                any_open = true;
            }
        }
        std::uint64_t watermark = std::numeric_limits<std::uint64_t>::max();
        for (unsigned cpu = 0; cpu < meta.cpus; ++cpu)
            if (!done[cpu]) watermark = std::min(watermark, pipeline.newest_ts(cpu));
        if (any_open) pipeline.release_until(watermark > holdback_ns ? watermark - holdback_ns : 0);
    }
    pipeline.finish();
}

struct Outcome {
    nlohmann::json report;
    std::uint64_t records, late, undecodable, lines;
};

Outcome outcome(const core::Pipeline& pipeline, const core::RecordingMeta& meta, std::uint64_t lines) {
    core::FixedSymbolizer symbols(meta.symbols);
    const auto losses = core::make_losses(meta.dropped_per_cpu, pipeline.late(), pipeline.undecodable(),
                                          meta.buffer_size, meta.peak_backlog_bytes);
    return {core::report_to_json(core::build_report(pipeline.tracker(), losses, symbols)), pipeline.records(),
            pipeline.late(), pipeline.undecodable(), lines};
}

constexpr auto kHoldback = std::chrono::microseconds(10);

Outcome reference_outcome(const std::filesystem::path& dir, bool printk) {
    const auto meta = read_recording_meta(dir);
    auto pipeline = std::make_unique<core::Pipeline>(meta.cpus);
    std::uint64_t lines = 0;
    if (printk) pipeline->set_printk_sink([&lines](core::PrintkLine&&) { ++lines; });
    reference_replay(dir, meta, *pipeline, std::chrono::nanoseconds(kHoldback).count());
    pipeline->settle();  // the end of input, as `kleakd report`
    return outcome(*pipeline, meta, lines);
}

Outcome fast_outcome(const std::filesystem::path& dir, bool printk) {
    const auto meta = read_recording_meta(dir);
    auto pipeline = std::make_unique<core::Pipeline>(meta.cpus);
    std::uint64_t lines = 0;
    if (printk) pipeline->set_printk_sink([&lines](core::PrintkLine&&) { ++lines; });
    TrackingThread tracking(*pipeline);
    replay_recording(dir, meta, *pipeline, kHoldback);
    tracking.finish();
    pipeline->settle();  // once the tracking thread is done
    return outcome(*pipeline, meta, lines);
}

void expect_same(const Outcome& got, const Outcome& expected) {
    EXPECT_EQ(got.records, expected.records);
    EXPECT_EQ(got.late, expected.late);
    EXPECT_EQ(got.undecodable, expected.undecodable);
    EXPECT_EQ(got.lines, expected.lines);
    EXPECT_EQ(got.report.dump(1), expected.report.dump(1));
}

class ThreadedReplay : public ::testing::Test {
protected:
    static void SetUpTestSuite() { dir_ = new std::filesystem::path(write_recording("synthetic")); }
    static void TearDownTestSuite() {
        std::filesystem::remove_all(*dir_);
        delete dir_;
    }
    static std::filesystem::path* dir_;
};
std::filesystem::path* ThreadedReplay::dir_ = nullptr;

TEST_F(ThreadedReplay, RecordingIsAdverseAndSpansSeveralMergeRounds) {
    EXPECT_GT(std::filesystem::file_size(*dir_ / "kleak0"), std::size_t{5} << 20);
    const Outcome reference = reference_outcome(*dir_, true);
    EXPECT_GT(reference.late, 100u);
    EXPECT_GT(reference.undecodable, 1000u);
    EXPECT_GT(reference.lines, 1000u);
    EXPECT_GT(reference.report.at("totals").at("unmatched_frees").get<std::uint64_t>(), 100u);
    EXPECT_GT(reference.report.at("totals").at("reordered_frees").get<std::uint64_t>(), 300u);
    EXPECT_GT(reference.report.at("totals").at("replaced").get<std::uint64_t>(), 10000u);
}

TEST_F(ThreadedReplay, RecordCountInMetaLeavesOutTimeMarks) {
    // The files hold the marks as frames, but meta.json's count is of the
    // records: what replay counts, plus what it cannot decode.
    const auto meta = read_recording_meta(*dir_);
    std::uint64_t frames = 0, marks = 0;
    for (unsigned cpu = 0; cpu < meta.cpus; ++cpu) {
        std::ifstream in(*dir_ / core::cpu_file_name(cpu), std::ios::binary);
        std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(chars.data()), chars.size());
        core::FrameReader reader(bytes.subspan(core::kRecordingHeaderSize));
        std::span<const std::byte> record;
        while (reader.next(record) == core::FrameStatus::ok) {
            ++frames;
            marks += core::is_time_mark(record);
        }
        EXPECT_EQ(reader.consumed(), bytes.size() - core::kRecordingHeaderSize);
    }
    EXPECT_GT(marks, 10'000u);
    EXPECT_EQ(meta.records, 300'000u);
    EXPECT_EQ(meta.records, frames - marks);
    const Outcome reference = reference_outcome(*dir_, false);
    EXPECT_EQ(meta.records, reference.records + reference.undecodable);
}

TEST_F(ThreadedReplay, SameReportAsTheReferencePath) {
    expect_same(fast_outcome(*dir_, false), reference_outcome(*dir_, false));
}

TEST_F(ThreadedReplay, WithAPrintkSinkTrackingStaysOnTheMergingThreadAndAgrees) {
    expect_same(fast_outcome(*dir_, true), reference_outcome(*dir_, true));
}

TEST_F(ThreadedReplay, ReplayWithoutTheThreadAgreesToo) {
    const auto meta = read_recording_meta(*dir_);
    core::Pipeline pipeline(meta.cpus);
    replay_recording(*dir_, meta, pipeline, kHoldback);
    pipeline.settle();
    expect_same(outcome(pipeline, meta, 0), reference_outcome(*dir_, false));
}

TEST_F(ThreadedReplay, AnExceptionWhileTrackingStopsTheReplayWithItInsteadOfTerminating) {
    const auto meta = read_recording_meta(*dir_);
    core::Pipeline pipeline(meta.cpus);
    std::size_t batches = 0;
    TrackingThread tracking(pipeline, [&batches](std::span<const core::Event>) {
        if (++batches == 2) throw std::bad_alloc();
    });
    // The merging thread sees the failure at a later handover (the recording
    // spans many batches) or at the latest in finish().
    EXPECT_THROW(
        {
            replay_recording(*dir_, meta, pipeline, kHoldback);
            tracking.finish();
        },
        std::bad_alloc);
    EXPECT_EQ(batches, 2u) << "the thread stopped at the failure";
    EXPECT_NO_THROW(tracking.finish()) << "reported once";
}

TEST(ThreadedReplayFixture, RealRecordingGivesTheSameReport) {
    expect_same(fast_outcome(kFixture, false), reference_outcome(kFixture, false));
    expect_same(fast_outcome(kFixture, true), reference_outcome(kFixture, true));
}

TEST(ThreadedReplayFixture, FinishIsIdempotentAndTheDestructorFinishes) {
    const auto meta = read_recording_meta(kFixture);
    core::Pipeline pipeline(meta.cpus);
    {
        TrackingThread tracking(pipeline);
        replay_recording(kFixture, meta, pipeline, kHoldback);
    }  // no finish(): the destructor must hand over and join
    pipeline.settle();
    const Outcome reference = reference_outcome(kFixture, false);
    expect_same(outcome(pipeline, meta, 0), reference);
}

// `kleakd record` runs as root: a link planted in its output directory must
// not let O_TRUNC empty the file it points at (service/file_io.h).
TEST(RecordingWriterFiles, APlantedLinkIsRefusedAndItsTargetUntouched) {
    const std::filesystem::path root = std::filesystem::temp_directory_path() /
                                       ("kleakd-recording-links-" + std::to_string(::getpid()));
    std::filesystem::remove_all(root);
    const std::filesystem::path dir = root / "out";
    std::filesystem::create_directories(dir);
    const std::filesystem::path target = root / "shadow";
    std::ofstream(target) << "keep\n";
    std::filesystem::create_symlink(target, dir / core::cpu_file_name(1));
    try {
        RecordingWriter writer(dir, 2);
        ADD_FAILURE() << "a planted link was followed";
    } catch (const std::exception& e) {
        EXPECT_NE(std::string(e.what()).find("refusing to create " + (dir / core::cpu_file_name(1)).string() +
                                             ": it is a symbolic link"),
                  std::string::npos)
            << e.what();
    }
    std::ifstream in(target);
    EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), "keep\n");

    // A link in place of the directory itself.
    std::filesystem::create_symlink(root / "out", root / "linked");
    EXPECT_THROW(RecordingWriter(root / "linked", 1), std::exception);
    std::filesystem::remove_all(root);
}

}  // namespace
}  // namespace kleak
