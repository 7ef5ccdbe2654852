// Snapshot files: naming, content, latest.json, retention, failure and
// recovery, and that readers never see a partial file. Every test writes into
// its own temporary directory.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "service/snapshot_writer.h"

namespace kleak::service {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using std::chrono::sys_days;
using std::chrono::system_clock;
using namespace std::chrono_literals;

// 2024-01-02 03:04:05.678 UTC.
const system_clock::time_point kTime =
    system_clock::time_point{sys_days{std::chrono::year{2024} / 1 / 2} + 3h + 4min + 5s + 678ms};
const std::string kTimeName = "snapshot-20240102T030405.678Z.json";

std::string read_text(const fs::path& path) {
    std::ifstream in(path);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

json read_json(const fs::path& path) { return json::parse(read_text(path)); }

std::set<std::string> names_in(const fs::path& directory) {
    std::set<std::string> names;
    for (const auto& entry : fs::directory_iterator(directory)) names.insert(entry.path().filename().string());
    return names;
}

std::set<std::string> temp_files_in(const fs::path& directory) {
    std::set<std::string> temps;
    for (const std::string& name : names_in(directory))
        if (name.ends_with(".tmp")) temps.insert(name);
    return temps;
}

json document(int n) { return {{"n", n}, {"sites", json::array({{{"site", "kmalloc_trace+0x10"}, {"bytes", n}}})}}; }

void touch(const fs::path& path, const std::string& content = "foreign\n") { std::ofstream(path) << content; }

class SnapshotWriterTest : public ::testing::Test {
protected:
    void SetUp() override {
        std::string pattern = (fs::temp_directory_path() / "kleak-snapshots-XXXXXX").string();
        ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
        root_ = pattern;
    }
    void TearDown() override {
        std::error_code ec;
        fs::remove_all(root_, ec);
    }

    fs::path root_;
};

// --- naming rules ---------------------------------------------------------------

TEST(SnapshotNames, UtcToTheMillisecond) {
    EXPECT_EQ(snapshot_file_name(kTime), kTimeName);
    EXPECT_EQ(snapshot_file_name(kTime + 999us), kTimeName);  // truncated, not rounded
    EXPECT_EQ(snapshot_file_name(kTime, 1), "snapshot-20240102T030405.678Z-1.json");
    EXPECT_EQ(snapshot_file_name(system_clock::time_point{}), "snapshot-19700101T000000.000Z.json");
    EXPECT_EQ(snapshot_file_name(
                  system_clock::time_point{sys_days{std::chrono::year{2031} / 12 / 31} + 23h + 59min + 59s + 999ms}),
              "snapshot-20311231T235959.999Z.json");
}

TEST(SnapshotNames, ParseBackWhatIsWritten) {
    EXPECT_EQ(parse_snapshot_file_name(kTimeName), (SnapshotName{"20240102T030405.678Z", 0}));
    EXPECT_EQ(parse_snapshot_file_name(snapshot_file_name(kTime, 12)), (SnapshotName{"20240102T030405.678Z", 12}));
}

TEST(SnapshotNames, AnythingElseIsNotASnapshot) {
    for (const char* name : {"latest.json", "snapshot-notes.json", "snapshot-20240102T030405.678Z.json.bak",
                             "snapshot-20240102T030405.678Z-.json", "snapshot-20240102T030405.678Z-x1.json",
                             "snapshot-20240102T030405.678Z-+1.json", "snapshot-2024010xT030405.678Z.json",
                             "snapshot-20240102T030405.678.json", "snapshot-20240102T030405678Z.json",
                             "Snapshot-20240102T030405.678Z.json", ".kleakd-1-2.tmp", ""})
        EXPECT_FALSE(parse_snapshot_file_name(name).has_value()) << name;
}

TEST(SnapshotNames, OrderIsTimeThenSequence) {
    const auto name = [](system_clock::time_point t, unsigned sequence) {
        return *parse_snapshot_file_name(snapshot_file_name(t, sequence));
    };
    EXPECT_LT(name(kTime, 0), name(kTime, 1));
    EXPECT_LT(name(kTime, 2), name(kTime, 10));  // numerically, not as text
    EXPECT_LT(name(kTime, 10), name(kTime + 1ms, 0));
    EXPECT_LT(name(kTime + 1ms, 0), name(kTime + 1s, 0));
}

TEST(SnapshotNames, TempFilesAreRecognised) {
    EXPECT_TRUE(is_temp_file_name(".kleakd-123-4.tmp"));
    EXPECT_FALSE(is_temp_file_name("other.tmp"));
    EXPECT_FALSE(is_temp_file_name(".kleakd-.tmp"));
    EXPECT_FALSE(is_temp_file_name(kTimeName));
}

TEST(FilesToPrune, OldestSnapshotsBeyondRetentionAndLeftoverTempFiles) {
    const std::vector<std::string> listing{
        snapshot_file_name(kTime + 2s),
        snapshot_file_name(kTime),
        "latest.json",
        snapshot_file_name(kTime, 1),
        "notes.txt",
        ".kleakd-77-0.tmp",
        snapshot_file_name(kTime + 1s),
        "snapshot-notes.json",
    };
    const std::vector<std::string> doomed = files_to_prune(listing, 2);
    EXPECT_EQ(std::set<std::string>(doomed.begin(), doomed.end()),
              (std::set<std::string>{".kleakd-77-0.tmp", snapshot_file_name(kTime), snapshot_file_name(kTime, 1)}));
    EXPECT_EQ(doomed.size(), 3u);
}

TEST(FilesToPrune, NothingWhenWithinRetention) {
    EXPECT_TRUE(files_to_prune({snapshot_file_name(kTime), "latest.json"}, 1).empty());
    EXPECT_TRUE(files_to_prune({}, 5).empty());
}

// --- writing ---------------------------------------------------------------------

TEST_F(SnapshotWriterTest, WritesTheDocumentUnderItsTimestampName) {
    const fs::path directory = root_ / "var" / "snapshots";  // missing: created
    SnapshotWriter writer(directory, 10);
    ASSERT_EQ(writer.write(document(1), kTime), std::nullopt);

    EXPECT_EQ(names_in(directory), (std::set<std::string>{kTimeName, "latest.json"}));
    const std::string text = read_text(directory / kTimeName);
    EXPECT_EQ(json::parse(text), document(1));
    EXPECT_EQ(text, document(1).dump(2) + "\n");  // pretty, newline-terminated
    EXPECT_EQ(read_text(directory / "latest.json"), text);
    EXPECT_EQ(writer.directory(), directory);
}

TEST_F(SnapshotWriterTest, WritesATextDocumentAsGiven) {
    // The daemon's snapshots: text whose history section was written as text.
    const fs::path directory = root_ / "snapshots";
    SnapshotWriter writer(directory, 10);
    const std::string text = "{\n  \"n\": 1,\n  \"history\": {\"sites\": [\n      {\"tiers\": [[[1,2,3]]]}\n  ]}\n}\n";
    ASSERT_EQ(writer.write_text(text, kTime), std::nullopt);
    EXPECT_EQ(read_text(directory / kTimeName), text);
    EXPECT_EQ(read_text(directory / "latest.json"), text);
    EXPECT_EQ(latest_snapshot_path(directory), directory / "latest.json");
}

TEST_F(SnapshotWriterTest, CreatesMissingDirectoriesPrivateAndFilesReadable) {
    const mode_t old_umask = ::umask(022);
    const fs::path directory = root_ / "a" / "b";
    SnapshotWriter writer(directory, 10);
    const auto error = writer.write(document(1), kTime);
    ::umask(old_umask);
    ASSERT_EQ(error, std::nullopt);

    struct stat st {};
    for (const fs::path& created : {root_ / "a", directory}) {
        ASSERT_EQ(::stat(created.c_str(), &st), 0);
        EXPECT_EQ(st.st_mode & 07777, 0750u) << created;
    }
    for (const char* name : {kTimeName.c_str(), "latest.json"}) {
        ASSERT_EQ(::stat((directory / name).c_str(), &st), 0);
        EXPECT_EQ(st.st_mode & 07777, 0644u) << name;
    }
}

TEST_F(SnapshotWriterTest, LatestIsACopyOfTheNewest) {
    SnapshotWriter writer(root_, 10);
    for (int n = 0; n < 3; ++n) ASSERT_EQ(writer.write(document(n), kTime + n * 1s), std::nullopt);
    EXPECT_EQ(read_json(root_ / "latest.json"), document(2));
    EXPECT_EQ(read_text(root_ / "latest.json"), read_text(root_ / snapshot_file_name(kTime + 2s)));
    // A copy, not a second name for the snapshot's inode.
    EXPECT_FALSE(fs::equivalent(root_ / "latest.json", root_ / snapshot_file_name(kTime + 2s)));
}

TEST_F(SnapshotWriterTest, SameMillisecondNeverOverwrites) {
    SnapshotWriter writer(root_, 10);
    for (int n = 0; n < 3; ++n) ASSERT_EQ(writer.write(document(n), kTime), std::nullopt);
    EXPECT_EQ(read_json(root_ / snapshot_file_name(kTime, 0)), document(0));
    EXPECT_EQ(read_json(root_ / snapshot_file_name(kTime, 1)), document(1));
    EXPECT_EQ(read_json(root_ / snapshot_file_name(kTime, 2)), document(2));
    EXPECT_EQ(read_json(root_ / "latest.json"), document(2));
}

TEST_F(SnapshotWriterTest, RetentionKeepsTheNewestAndLeavesForeignFilesAlone) {
    const std::set<std::string> foreign{"notes.txt", "snapshot-notes.json", "latest.json.bak", "README"};
    for (const std::string& name : foreign) touch(root_ / name);
    fs::create_directory(root_ / "archive");

    SnapshotWriter writer(root_, 3);
    for (int n = 0; n < 7; ++n) ASSERT_EQ(writer.write(document(n), kTime + n * 1min), std::nullopt);

    std::set<std::string> expected = foreign;
    expected.insert({"archive", "latest.json", snapshot_file_name(kTime + 4min), snapshot_file_name(kTime + 5min),
                     snapshot_file_name(kTime + 6min)});
    EXPECT_EQ(names_in(root_), expected);
    for (const std::string& name : foreign) EXPECT_EQ(read_text(root_ / name), "foreign\n") << name;
}

TEST_F(SnapshotWriterTest, RetentionCountsSnapshotsAlreadyThere) {
    // Left by an earlier run of the daemon, including same-millisecond ones.
    for (const std::string& name :
         {snapshot_file_name(kTime - 1h), snapshot_file_name(kTime - 1h, 1), snapshot_file_name(kTime - 1h, 2)})
        touch(root_ / name, "{}\n");
    SnapshotWriter writer(root_, 2);
    ASSERT_EQ(writer.write(document(0), kTime), std::nullopt);
    EXPECT_EQ(names_in(root_), (std::set<std::string>{snapshot_file_name(kTime - 1h, 2), kTimeName, "latest.json"}));
}

TEST_F(SnapshotWriterTest, ReconfigureMovesAndShrinks) {
    SnapshotWriter writer(root_ / "one", 5);
    for (int n = 0; n < 4; ++n) ASSERT_EQ(writer.write(document(n), kTime + n * 1s), std::nullopt);

    writer.reconfigure(root_ / "one", 2);
    ASSERT_EQ(writer.write(document(4), kTime + 4s), std::nullopt);
    EXPECT_EQ(names_in(root_ / "one"),
              (std::set<std::string>{snapshot_file_name(kTime + 3s), snapshot_file_name(kTime + 4s), "latest.json"}));

    writer.reconfigure(root_ / "two", 2);
    EXPECT_EQ(writer.directory(), root_ / "two");
    ASSERT_EQ(writer.write(document(5), kTime + 5s), std::nullopt);
    EXPECT_EQ(read_json(root_ / "two" / "latest.json"), document(5));
    EXPECT_EQ(read_json(root_ / "one" / "latest.json"), document(4));  // the old directory is left as it was
}

TEST_F(SnapshotWriterTest, RetentionZeroStillKeepsTheSnapshotJustWritten) {
    SnapshotWriter writer(root_, 0);
    ASSERT_EQ(writer.write(document(0), kTime), std::nullopt);
    ASSERT_EQ(writer.write(document(1), kTime + 1s), std::nullopt);
    EXPECT_EQ(names_in(root_), (std::set<std::string>{snapshot_file_name(kTime + 1s), "latest.json"}));
}

TEST_F(SnapshotWriterTest, NoTemporaryFilesRemainAndLeftoversAreCleared) {
    touch(root_ / ".kleakd-99999-0.tmp");  // a write interrupted by a crash
    touch(root_ / "someone-elses.tmp");
    SnapshotWriter writer(root_, 5);
    for (int n = 0; n < 20; ++n) ASSERT_EQ(writer.write(document(n), kTime + n * 1s), std::nullopt);
    EXPECT_EQ(temp_files_in(root_), (std::set<std::string>{"someone-elses.tmp"}));
}

TEST_F(SnapshotWriterTest, InvalidUtf8IsReplacedNotThrown) {
    SnapshotWriter writer(root_, 5);
    ASSERT_EQ(writer.write(json{{"symbol", std::string("bad\xff")}}, kTime), std::nullopt);
    EXPECT_EQ(read_json(root_ / "latest.json")["symbol"], "bad\xEF\xBF\xBD");
}

// --- failures ---------------------------------------------------------------------

TEST_F(SnapshotWriterTest, DirectoryUnderARegularFileFailsWithThePathThenRecovers) {
    // Not a permission problem, so it fails for root too.
    const fs::path blocker = root_ / "blocker";
    touch(blocker);
    const fs::path directory = blocker / "snapshots";
    SnapshotWriter writer(directory, 5);

    std::optional<std::string> error;
    EXPECT_NO_THROW(error = writer.write(document(0), kTime));
    ASSERT_TRUE(error.has_value());
    EXPECT_NE(error->find(blocker.string()), std::string::npos) << *error;
    EXPECT_NE(error->find("Not a directory"), std::string::npos) << *error;

    fs::remove(blocker);
    ASSERT_EQ(writer.write(document(1), kTime + 1s), std::nullopt);
    EXPECT_EQ(read_json(directory / "latest.json"), document(1));
}

TEST_F(SnapshotWriterTest, ProcFailsWithThePath) {
    for (const fs::path& directory : {fs::path("/proc/kleakd-test-snapshots"), fs::path("/proc/self")}) {
        SnapshotWriter writer(directory, 5);
        std::optional<std::string> error;
        EXPECT_NO_THROW(error = writer.write(document(0), kTime));
        ASSERT_TRUE(error.has_value()) << directory;
        EXPECT_NE(error->find(directory.string()), std::string::npos) << *error;
    }
}

TEST_F(SnapshotWriterTest, AFailedWriteLeavesNoTemporaryFileAndTheOldLatest) {
    SnapshotWriter writer(root_, 5);
    ASSERT_EQ(writer.write(document(0), kTime), std::nullopt);

    // Files may grow to 1 KiB: the next, bigger, snapshot fails mid-write
    // with EFBIG (SIGXFSZ ignored so the test process survives).
    rlimit old_limit{};
    ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old_limit), 0);
    const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    rlimit small = old_limit;
    small.rlim_cur = 1024;
    ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
    const json big{{"padding", std::string(64 * 1024, 'x')}};
    const std::optional<std::string> error = writer.write(big, kTime + 1s);
    ::setrlimit(RLIMIT_FSIZE, &old_limit);
    std::signal(SIGXFSZ, old_handler);

    ASSERT_TRUE(error.has_value());
    EXPECT_NE(error->find(root_.string()), std::string::npos) << *error;
    EXPECT_NE(error->find("File too large"), std::string::npos) << *error;
    EXPECT_EQ(temp_files_in(root_), std::set<std::string>{});
    EXPECT_EQ(names_in(root_), (std::set<std::string>{kTimeName, "latest.json"}));
    EXPECT_EQ(read_json(root_ / "latest.json"), document(0));

    ASSERT_EQ(writer.write(big, kTime + 2s), std::nullopt);
    EXPECT_EQ(read_json(root_ / "latest.json"), big);
}

TEST_F(SnapshotWriterTest, LatestThatCannotBeReplacedFailsWithItsPathThenRecovers) {
    // A directory squatting on latest.json: rename() cannot replace it.
    fs::create_directories(root_ / "latest.json" / "occupied");
    SnapshotWriter writer(root_, 5);
    const std::optional<std::string> error = writer.write(document(0), kTime);
    ASSERT_TRUE(error.has_value());
    EXPECT_NE(error->find((root_ / "latest.json").string()), std::string::npos) << *error;
    EXPECT_EQ(temp_files_in(root_), std::set<std::string>{});
    EXPECT_EQ(read_json(root_ / kTimeName), document(0));  // the snapshot itself did land

    fs::remove_all(root_ / "latest.json");
    ASSERT_EQ(writer.write(document(1), kTime + 1s), std::nullopt);
    EXPECT_EQ(read_json(root_ / "latest.json"), document(1));
}

// --- atomicity ---------------------------------------------------------------------

TEST_F(SnapshotWriterTest, LatestIsReplacedNotRewrittenInPlace) {
    // A reader holding the old latest.json open keeps the complete old
    // content: the new one is a different file moved over the name.
    SnapshotWriter writer(root_, 5);
    ASSERT_EQ(writer.write(document(0), kTime), std::nullopt);
    std::ifstream held(root_ / "latest.json");
    struct stat before {};
    ASSERT_EQ(::stat((root_ / "latest.json").c_str(), &before), 0);

    ASSERT_EQ(writer.write(document(1), kTime + 1s), std::nullopt);
    struct stat after {};
    ASSERT_EQ(::stat((root_ / "latest.json").c_str(), &after), 0);
    EXPECT_NE(before.st_ino, after.st_ino);
    std::ostringstream old_text;
    old_text << held.rdbuf();
    EXPECT_EQ(json::parse(old_text.str()), document(0));
    EXPECT_EQ(read_json(root_ / "latest.json"), document(1));
}

TEST_F(SnapshotWriterTest, AConcurrentReaderOnlyEverSeesCompleteLatest) {
    SnapshotWriter writer(root_, 5);
    const auto big_document = [](int n) { return json{{"n", n}, {"padding", std::string(32 * 1024, 'x')}}; };
    ASSERT_EQ(writer.write(big_document(0), kTime), std::nullopt);

    std::atomic<int> reads{0}, partial{0};
    // jthread: stopped and joined on every way out of the test, failed asserts included.
    std::jthread reader([&](std::stop_token stop) {
        while (!stop.stop_requested()) {
            const json parsed = json::parse(read_text(root_ / "latest.json"), nullptr, /*allow_exceptions=*/false);
            if (parsed.is_discarded() || parsed.value("padding", std::string{}).size() != 32 * 1024) ++partial;
            ++reads;
        }
    });
    for (int n = 1; n <= 200; ++n) {
        const auto error = writer.write(big_document(n), kTime + n * 1s);
        ASSERT_EQ(error, std::nullopt) << *error;
        // Deterministic part: after each write, latest.json is exactly it.
        ASSERT_EQ(read_json(root_ / "latest.json")["n"], n);
    }
    reader.request_stop();
    reader.join();
    EXPECT_EQ(partial, 0) << "of " << reads << " reads";
    EXPECT_GT(reads, 0);
}

// --- planted symbolic links (file_io.h) ------------------------------------------------

TEST_F(SnapshotWriterTest, ALinkInPlaceOfTheDirectoryIsRefused) {
    const fs::path elsewhere = root_ / "elsewhere";
    fs::create_directories(elsewhere);
    const fs::path directory = root_ / "snapshots";
    fs::create_symlink(elsewhere, directory);
    SnapshotWriter writer(directory, 10);
    const auto error = writer.write(document(1), kTime);
    ASSERT_TRUE(error.has_value());
    EXPECT_EQ(*error, "refusing to open directory " + directory.string() +
                          ": it is a symbolic link (kleakd does not follow links where it writes; use the real path)");
    EXPECT_TRUE(names_in(elsewhere).empty());
}

TEST_F(SnapshotWriterTest, LinksPlantedUnderItsNamesAreReplacedOrPassedOverNeverFollowed) {
    const fs::path directory = root_ / "snapshots";
    fs::create_directories(directory);
    const fs::path target = root_ / "shadow";
    touch(target, "keep\n");
    fs::create_symlink(target, directory / "latest.json");
    fs::create_symlink(target, directory / kTimeName);
    SnapshotWriter writer(directory, 10);
    ASSERT_EQ(writer.write(document(1), kTime), std::nullopt);
    EXPECT_EQ(read_text(target), "keep\n");
    // latest.json is now a file of its own; the snapshot took the next free name.
    EXPECT_FALSE(fs::is_symlink(directory / "latest.json"));
    EXPECT_EQ(read_json(directory / "latest.json"), document(1));
    EXPECT_TRUE(fs::is_symlink(directory / kTimeName));
    EXPECT_EQ(read_json(directory / snapshot_file_name(kTime, 1)), document(1));
}

}  // namespace
}  // namespace kleak::service
