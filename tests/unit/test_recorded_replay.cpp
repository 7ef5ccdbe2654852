// Replays a real recording made on a 6.18 kernel (tests/fixtures/recording-pipes:
// `kleakd record` for 1 s while a process held 32 pipes open, each pipe
// allocating twice in alloc_pipe_info) through the same reader, merge and
// tracker as `kleakd report`.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "app/recording_io.h"
#include "core/report.h"
#include "kleak_abi.h"

namespace {

const std::filesystem::path kRecording = std::filesystem::path(KLEAK_FIXTURES_DIR) / "recording-pipes";

struct Replayed {
    std::unique_ptr<kleak::core::Pipeline> pipeline;
    kleak::core::Report report;
};

Replayed replay(const std::filesystem::path& dir) {
    const auto meta = kleak::read_recording_meta(dir);
    auto pipeline = std::make_unique<kleak::core::Pipeline>(meta.cpus);
    kleak::replay_recording(dir, meta, *pipeline, std::chrono::milliseconds(10));
    pipeline->settle();  // as `kleakd report` does at the end of a recording
    kleak::core::FixedSymbolizer symbols(meta.symbols);
    auto report = kleak::core::build_report(
        pipeline->tracker(),
        kleak::core::make_losses(meta.dropped_per_cpu, pipeline->late(), pipeline->undecodable(), meta.buffer_size,
                                 meta.peak_backlog_bytes),
        symbols);
    return {std::move(pipeline), std::move(report)};
}

TEST(RecordedReplay, HeldPipesAreTheUnfreedAllocationsAtAllocPipeInfo) {
    const auto [pipeline, report] = replay(kRecording);
    EXPECT_EQ(pipeline->records(), 7985u);
    EXPECT_EQ(pipeline->undecodable(), 0u);
    EXPECT_EQ(report.losses.dropped(), 0u);

    std::uint64_t pipe_sites = 0;
    for (const auto& row : report.sites) {
        if (row.function != "alloc_pipe_info") continue;
        ++pipe_sites;
        EXPECT_EQ(row.stats.allocs, 32u) << row.site;
        EXPECT_EQ(row.stats.outstanding, 32u) << row.site;
        EXPECT_EQ(row.stats.frees, 0u) << row.site;
    }
    EXPECT_EQ(pipe_sites, 2u);

    // An ABI 1 recording: every free read the clock, so nothing is reordered,
    // and settled, nothing is left displaced.
    EXPECT_EQ(report.totals.reordered_frees, 0u);
    EXPECT_EQ(pipeline->tracker().displaced_count(), 0u);

    // The aggregates are consistent with each other.
    const auto& t = report.totals;
    EXPECT_EQ(t.outstanding, t.allocs - t.frees - t.replaced);
    EXPECT_EQ(t.outstanding_bytes + t.bytes_freed, t.bytes_alloc - [&] {
        std::uint64_t replaced_bytes = 0;
        for (const auto& row : report.sites) replaced_bytes += row.stats.replaced_bytes;
        return replaced_bytes;
    }());
}

TEST(RecordedReplay, ReplayIsDeterministic) {
    const auto a = kleak::core::report_to_json(replay(kRecording).report);
    const auto b = kleak::core::report_to_json(replay(kRecording).report);
    EXPECT_EQ(a, b);
}

// A copy of the fixture recording to damage.
class DamagedRecording : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = std::filesystem::temp_directory_path() /
               ("kleakd-damaged-" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "-" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
        std::filesystem::remove_all(dir_);
        std::filesystem::copy(kRecording, dir_);
    }
    void TearDown() override { std::filesystem::remove_all(dir_); }

    std::string replay_error() {
        try {
            replay(dir_);
        } catch (const std::exception& e) {
            return e.what();
        }
        return "";
    }

    std::filesystem::path dir_;
};

TEST_F(DamagedRecording, MissingMetaSaysWhatDirectoryIsExpected) {
    std::filesystem::remove(dir_ / "meta.json");
    EXPECT_NE(replay_error().find("kleakd record"), std::string::npos);
}

TEST_F(DamagedRecording, CorruptFrameLengthNamesFileAndOffset) {
    // The first frame's length sits right after the 32-byte file header.
    std::fstream f(dir_ / "kleak0", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(32);
    const std::uint32_t huge = 0x7fffffff;
    f.write(reinterpret_cast<const char*>(&huge), sizeof huge);
    f.close();
    const std::string error = replay_error();
    EXPECT_NE(error.find("kleak0: corrupt frame at offset 32"), std::string::npos) << error;
}

TEST_F(DamagedRecording, TruncatedLastRecordIsIgnoredNotFatal) {
    const auto path = dir_ / "kleak1";
    std::filesystem::resize_file(path, std::filesystem::file_size(path) - 5);
    EXPECT_EQ(replay_error(), "");
    EXPECT_EQ(replay(dir_).pipeline->records(), 7985u - 1);
}

// The fixture was recorded with ABI version 1, the oldest this kleakd reads
// (it writes version 2; test_threaded_replay replays such recordings).
void set_abi_version(const std::filesystem::path& dir, int version) {
    std::ifstream in(dir / "meta.json");
    auto meta = nlohmann::json::parse(in);
    in.close();
    meta["abi_version"] = version;
    std::ofstream(dir / "meta.json") << meta.dump();
}

TEST_F(DamagedRecording, AbiVersionOlderThanAnyReadableIsRefused) {
    set_abi_version(dir_, KLEAK_ABI_OLDEST_READABLE - 1);
    EXPECT_NE(replay_error().find("ABI version 0"), std::string::npos) << replay_error();
}

TEST_F(DamagedRecording, NewerAbiVersionIsRefused) {
    set_abi_version(dir_, 99);
    EXPECT_NE(replay_error().find("ABI version 99"), std::string::npos) << replay_error();
}

TEST_F(DamagedRecording, MissingCpuFileIsNamed) {
    std::filesystem::remove(dir_ / "kleak1");
    EXPECT_NE(replay_error().find("kleak1"), std::string::npos) << replay_error();
}

// The in-memory reader (what the fuzz target drives) reads the fixture as
// the mapped one does, and refuses a file count that is not meta.json's.
std::vector<std::byte> file_bytes(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto* bytes = reinterpret_cast<const std::byte*>(chars.data());
    return {bytes, bytes + chars.size()};
}

TEST(RecordingFiles, InMemoryReplayMatchesTheMappedOne) {
    std::ifstream in(kRecording / "meta.json");
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto meta = kleak::parse_recording_meta(text, "meta.json");
    const auto cpu0 = file_bytes(kRecording / "kleak0");
    const auto cpu1 = file_bytes(kRecording / "kleak1");
    const std::vector<kleak::RecordingFile> files{{"kleak0", cpu0, {}}, {"kleak1", cpu1, {}}};

    kleak::core::Pipeline pipeline(meta.cpus);
    kleak::replay_recording_files(files, meta, pipeline, std::chrono::milliseconds(10));
    pipeline.settle();
    EXPECT_EQ(pipeline.records(), 7985u);
    EXPECT_EQ(pipeline.tracker().outstanding_count(), replay(kRecording).pipeline->tracker().outstanding_count());

    kleak::core::Pipeline other(meta.cpus);
    try {
        kleak::replay_recording_files(std::span(files).first(1), meta, other, std::chrono::milliseconds(10));
        ADD_FAILURE() << "one file for two CPUs was accepted";
    } catch (const std::runtime_error& e) {
        EXPECT_STREQ(e.what(), "the recording has 1 per-CPU files, meta.json says 2 CPUs");
    }
}

TEST(RecordingFiles, MetaThatIsNotJsonNamesTheFile) {
    try {
        kleak::parse_recording_meta("{\"cpus\":", "/x/meta.json");
        ADD_FAILURE() << "accepted";
    } catch (const std::runtime_error& e) {
        EXPECT_TRUE(std::string(e.what()).starts_with("/x/meta.json is not valid JSON")) << e.what();
    }
}

}  // namespace
