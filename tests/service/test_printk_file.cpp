// The printk log file: appending, size rotation at the exact boundary,
// retention that touches only its own files, reconfiguration, and recovery
// from an unwritable directory and from the file being deleted or moved away.
// Every test works in its own temporary directory.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "service/printk_file.h"

namespace kleak::service {
namespace {

namespace fs = std::filesystem;

std::string read_text(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    EXPECT_TRUE(in) << "cannot open " << path;
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

std::set<std::string> names_in(const fs::path& directory) {
    std::set<std::string> names;
    for (const auto& entry : fs::directory_iterator(directory)) names.insert(entry.path().filename().string());
    return names;
}

void touch(const fs::path& path, const std::string& content = "foreign\n") {
    std::ofstream(path, std::ios::binary) << content;
}

// A line that takes `bytes` in the file with its newline: "<tag>xxxx...".
std::string line_of(std::size_t bytes, char tag) {
    std::string line(bytes - 1, 'x');
    line[0] = tag;
    return line;
}

class PrintkFileTest : public ::testing::Test {
protected:
    void SetUp() override {
        std::string pattern = (fs::temp_directory_path() / "kleak-printk-XXXXXX").string();
        ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
        root_ = pattern;
        dir_ = root_ / "printk";
    }
    void TearDown() override {
        std::error_code ec;
        fs::remove_all(root_, ec);
    }

    // Appends every line, expecting each to succeed.
    static void append_all(PrintkFile& file, std::initializer_list<std::string> lines) {
        for (const std::string& line : lines) {
            const auto error = file.append(line);
            ASSERT_FALSE(error.has_value()) << *error;
        }
    }

    fs::path root_;
    fs::path dir_;
};

// --- names ------------------------------------------------------------------------

TEST(PrintkFileNames, OnlyPrintkLogDotNumberIsRotated) {
    EXPECT_EQ(parse_rotated_printk_name("printk.log.1"), 1u);
    EXPECT_EQ(parse_rotated_printk_name("printk.log.1000"), 1000u);
    EXPECT_EQ(parse_rotated_printk_name("printk.log"), std::nullopt);
    EXPECT_EQ(parse_rotated_printk_name("printk.log."), std::nullopt);
    EXPECT_EQ(parse_rotated_printk_name("printk.log.0"), std::nullopt);
    EXPECT_EQ(parse_rotated_printk_name("printk.log.01"), std::nullopt);
    EXPECT_EQ(parse_rotated_printk_name("printk.log.-1"), std::nullopt);
    EXPECT_EQ(parse_rotated_printk_name("printk.log.1.gz"), std::nullopt);
    EXPECT_EQ(parse_rotated_printk_name("printk.log.x"), std::nullopt);
    EXPECT_EQ(parse_rotated_printk_name("printk.log1"), std::nullopt);
    EXPECT_EQ(parse_rotated_printk_name("printk.log.99999999999999999999"), std::nullopt);
    EXPECT_EQ(parse_rotated_printk_name("other.log.1"), std::nullopt);
}

// --- appending ---------------------------------------------------------------------

TEST_F(PrintkFileTest, ConstructorAndReconfigureDoNoIo) {
    PrintkFile file(dir_, 100, 3);
    file.reconfigure(root_ / "elsewhere", 200, 4);
    EXPECT_FALSE(fs::exists(dir_));
    EXPECT_FALSE(fs::exists(root_ / "elsewhere"));
    EXPECT_EQ(file.directory(), root_ / "elsewhere");
    EXPECT_EQ(file.flush(), std::nullopt);  // nothing open yet
}

TEST_F(PrintkFileTest, AppendsLinesWithNewlinesAndReadsBack) {
    const fs::path nested = root_ / "a" / "b" / "printk";
    PrintkFile file(nested, 1 << 20, 5);
    append_all(file, {"[    1.000002] cpu1: hello", "", "[    2.000000] cpu0: world \\x1b"});
    EXPECT_EQ(read_text(nested / "printk.log"), "[    1.000002] cpu1: hello\n\n[    2.000000] cpu0: world \\x1b\n");
    EXPECT_EQ(file.path(), nested / "printk.log");
    EXPECT_EQ(names_in(nested), (std::set<std::string>{"printk.log"}));
    EXPECT_EQ(file.flush(), std::nullopt);
}

TEST_F(PrintkFileTest, CreatesPrivateDirectoryAndFile) {
    PrintkFile file(dir_, 1 << 20, 5);
    append_all(file, {"secret kernel address ffff888012345678"});
    struct stat st {};
    ASSERT_EQ(::stat(dir_.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777 & ~mode_t{0750}, 0u) << std::oct << (st.st_mode & 07777);
    ASSERT_EQ(::stat((dir_ / "printk.log").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777 & ~mode_t{0640}, 0u) << std::oct << (st.st_mode & 07777);
}

TEST_F(PrintkFileTest, AppendsToAnExistingFile) {
    fs::create_directories(dir_);
    touch(dir_ / "printk.log", "from an earlier run\n");
    PrintkFile file(dir_, 1 << 20, 5);
    append_all(file, {"now"});
    EXPECT_EQ(read_text(dir_ / "printk.log"), "from an earlier run\nnow\n");
}

TEST_F(PrintkFileTest, KeepsTheFileOpenBetweenLines) {
    PrintkFile file(dir_, 1 << 20, 5);
    append_all(file, {"one"});
    struct stat before {};
    ASSERT_EQ(::stat((dir_ / "printk.log").c_str(), &before), 0);
    append_all(file, {"two", "three"});
    struct stat after {};
    ASSERT_EQ(::stat((dir_ / "printk.log").c_str(), &after), 0);
    EXPECT_EQ(before.st_ino, after.st_ino);
    EXPECT_EQ(read_text(dir_ / "printk.log"), "one\ntwo\nthree\n");
}

// --- rotation --------------------------------------------------------------------------

TEST_F(PrintkFileTest, RotatesBeforeALineThatWouldPassMaxSize) {
    // 30 bytes a line: three fit in 100 (90), the fourth would make 120.
    PrintkFile file(dir_, 100, 5);
    const std::string a = line_of(30, 'a'), b = line_of(30, 'b'), c = line_of(30, 'c'), d = line_of(30, 'd'),
                      e = line_of(30, 'e'), f = line_of(30, 'f'), g = line_of(30, 'g');
    append_all(file, {a, b, c});
    EXPECT_EQ(names_in(dir_), (std::set<std::string>{"printk.log"}));
    EXPECT_EQ(fs::file_size(dir_ / "printk.log"), 90u);

    append_all(file, {d});
    EXPECT_EQ(read_text(dir_ / "printk.log.1"), a + "\n" + b + "\n" + c + "\n");
    EXPECT_EQ(read_text(dir_ / "printk.log"), d + "\n");

    append_all(file, {e, f, g});
    EXPECT_EQ(names_in(dir_), (std::set<std::string>{"printk.log", "printk.log.1", "printk.log.2"}));
    EXPECT_EQ(read_text(dir_ / "printk.log.2"), a + "\n" + b + "\n" + c + "\n");
    EXPECT_EQ(read_text(dir_ / "printk.log.1"), d + "\n" + e + "\n" + f + "\n");
    EXPECT_EQ(read_text(dir_ / "printk.log"), g + "\n");
}

TEST_F(PrintkFileTest, AFileExactlyAtMaxSizeIsNotRotatedUntilTheNextLine) {
    // 25 bytes a line: four make exactly 100, which does not pass 100.
    PrintkFile file(dir_, 100, 5);
    append_all(file, {line_of(25, '1'), line_of(25, '2'), line_of(25, '3'), line_of(25, '4')});
    EXPECT_EQ(names_in(dir_), (std::set<std::string>{"printk.log"}));
    EXPECT_EQ(fs::file_size(dir_ / "printk.log"), 100u);

    // Even the smallest line (an empty one, 1 byte) passes it now.
    append_all(file, {""});
    EXPECT_EQ(fs::file_size(dir_ / "printk.log.1"), 100u);
    EXPECT_EQ(read_text(dir_ / "printk.log"), "\n");
}

TEST_F(PrintkFileTest, ALineLongerThanMaxSizeIsWrittenWholeToAFreshFile) {
    PrintkFile file(dir_, 100, 5);
    const std::string long_line = line_of(250, 'L');
    append_all(file, {"short", long_line});
    EXPECT_EQ(read_text(dir_ / "printk.log.1"), "short\n");
    EXPECT_EQ(read_text(dir_ / "printk.log"), long_line + "\n");

    // The next line rotates the oversized file away.
    append_all(file, {"next"});
    EXPECT_EQ(read_text(dir_ / "printk.log.2"), "short\n");
    EXPECT_EQ(read_text(dir_ / "printk.log.1"), long_line + "\n");
    EXPECT_EQ(read_text(dir_ / "printk.log"), "next\n");
}

TEST_F(PrintkFileTest, ALongFirstLineGoesIntoTheEmptyFileWithoutRotating) {
    PrintkFile file(dir_, 100, 5);
    const std::string long_line = line_of(101, 'L');
    append_all(file, {long_line});
    EXPECT_EQ(names_in(dir_), (std::set<std::string>{"printk.log"}));
    EXPECT_EQ(read_text(dir_ / "printk.log"), long_line + "\n");
}

TEST_F(PrintkFileTest, RetentionDeletesTheOldestAndNeverForeignFiles) {
    fs::create_directories(dir_);
    const std::set<std::string> foreign{"printk.log.0", "printk.log.01", "printk.log.x",    "printk.log1",
                                        "other.log",    "other.log.3",   "printk.log.3.gz", "latest.json"};
    for (const std::string& name : foreign) touch(dir_ / name);

    // 60-byte lines with max_size 100: every line after the first rotates.
    PrintkFile file(dir_, 100, 2);
    append_all(file, {line_of(60, '1'), line_of(60, '2'), line_of(60, '3'), line_of(60, '4'), line_of(60, '5')});

    std::set<std::string> expected = foreign;
    expected.insert({"printk.log", "printk.log.1", "printk.log.2"});
    EXPECT_EQ(names_in(dir_), expected);
    EXPECT_EQ(read_text(dir_ / "printk.log"), line_of(60, '5') + "\n");
    EXPECT_EQ(read_text(dir_ / "printk.log.1"), line_of(60, '4') + "\n");
    EXPECT_EQ(read_text(dir_ / "printk.log.2"), line_of(60, '3') + "\n");
    for (const std::string& name : foreign) EXPECT_EQ(read_text(dir_ / name), "foreign\n") << name;
}

TEST_F(PrintkFileTest, RetentionOfOneKeepsOnlyPrintkLogDotOne) {
    PrintkFile file(dir_, 100, 1);
    append_all(file, {line_of(60, '1'), line_of(60, '2'), line_of(60, '3')});
    EXPECT_EQ(names_in(dir_), (std::set<std::string>{"printk.log", "printk.log.1"}));
    EXPECT_EQ(read_text(dir_ / "printk.log.1"), line_of(60, '2') + "\n");
}

TEST_F(PrintkFileTest, ALowerRetentionPrunesHigherNumbersAtTheNextRotation) {
    fs::create_directories(dir_);
    for (const char* name : {"printk.log.4", "printk.log.7", "printk.log.1000"}) touch(dir_ / name, "old\n");
    PrintkFile file(dir_, 100, 5);
    append_all(file, {line_of(60, '1'), line_of(60, '2')});  // one rotation
    // retention 5: .4 shifted to .5, .7 and .1000 were past it.
    EXPECT_EQ(names_in(dir_), (std::set<std::string>{"printk.log", "printk.log.1", "printk.log.5"}));
    EXPECT_EQ(read_text(dir_ / "printk.log.5"), "old\n");

    file.reconfigure(dir_, 100, 2);
    append_all(file, {line_of(60, '3')});
    EXPECT_EQ(names_in(dir_), (std::set<std::string>{"printk.log", "printk.log.1", "printk.log.2"}));
    EXPECT_EQ(read_text(dir_ / "printk.log.2"), line_of(60, '1') + "\n");
    EXPECT_EQ(read_text(dir_ / "printk.log.1"), line_of(60, '2') + "\n");
    EXPECT_EQ(read_text(dir_ / "printk.log"), line_of(60, '3') + "\n");
}

TEST_F(PrintkFileTest, GapsInTheRotatedNumbersKeepTheirOrder) {
    fs::create_directories(dir_);
    touch(dir_ / "printk.log", "current\n");
    touch(dir_ / "printk.log.1", "newer\n");
    touch(dir_ / "printk.log.3", "older\n");
    PrintkFile file(dir_, 10, 5);
    append_all(file, {"fresh"});  // 8 + 6 bytes passes 10
    EXPECT_EQ(read_text(dir_ / "printk.log"), "fresh\n");
    EXPECT_EQ(read_text(dir_ / "printk.log.1"), "current\n");
    EXPECT_EQ(read_text(dir_ / "printk.log.2"), "newer\n");
    EXPECT_EQ(read_text(dir_ / "printk.log.4"), "older\n");
    EXPECT_FALSE(fs::exists(dir_ / "printk.log.3"));
}

TEST_F(PrintkFileTest, ASmallerMaxSizeRotatesAtTheNextLine) {
    PrintkFile file(dir_, 1000, 5);
    append_all(file, {line_of(200, 'a')});
    file.reconfigure(dir_, 100, 5);
    append_all(file, {"b"});
    EXPECT_EQ(read_text(dir_ / "printk.log.1"), line_of(200, 'a') + "\n");
    EXPECT_EQ(read_text(dir_ / "printk.log"), "b\n");
}

// --- reconfiguration -----------------------------------------------------------------------

TEST_F(PrintkFileTest, ReconfigureToANewDirectoryStartsAFileThere) {
    PrintkFile file(dir_, 1 << 20, 5);
    append_all(file, {"before"});
    const fs::path moved = root_ / "moved";
    file.reconfigure(moved, 1 << 20, 5);
    EXPECT_EQ(file.directory(), moved);
    append_all(file, {"after"});
    EXPECT_EQ(read_text(dir_ / "printk.log"), "before\n");
    EXPECT_EQ(read_text(moved / "printk.log"), "after\n");
}

TEST_F(PrintkFileTest, ReconfigureToTheSameDirectoryKeepsAppending) {
    PrintkFile file(dir_, 1 << 20, 5);
    append_all(file, {"one"});
    file.reconfigure(dir_, 1 << 20, 9);
    append_all(file, {"two"});
    EXPECT_EQ(read_text(dir_ / "printk.log"), "one\ntwo\n");
}

// --- failures and recovery -------------------------------------------------------------------

TEST_F(PrintkFileTest, AnUnwritableDirectoryIsReportedThenRecoveredFrom) {
    const fs::path blocker = root_ / "blocker";
    touch(blocker, "a regular file where a directory should be\n");
    const fs::path dir = blocker / "printk";
    PrintkFile file(dir, 1 << 20, 5);

    const auto error = file.append("lost");
    ASSERT_TRUE(error.has_value());
    EXPECT_NE(error->find(dir.string()), std::string::npos) << *error;
    EXPECT_NE(error->find("Not a directory"), std::string::npos) << *error;
    // Still failing: every call retries, none throws.
    EXPECT_TRUE(file.append("lost too").has_value());

    fs::remove(blocker);
    append_all(file, {"kept"});
    EXPECT_EQ(read_text(dir / "printk.log"), "kept\n");
}

TEST_F(PrintkFileTest, ADirectoryInPlaceOfTheFileIsReportedThenRecoveredFrom) {
    fs::create_directories(dir_ / "printk.log");
    PrintkFile file(dir_, 1 << 20, 5);
    const auto error = file.append("lost");
    ASSERT_TRUE(error.has_value());
    EXPECT_EQ(*error, "cannot open " + (dir_ / "printk.log").string() + ": Is a directory");

    fs::remove(dir_ / "printk.log");
    append_all(file, {"kept"});
    EXPECT_EQ(read_text(dir_ / "printk.log"), "kept\n");
}

TEST_F(PrintkFileTest, AFailedRotationLosesTheLineAndIsRetriedNextTime) {
    // A non-empty directory named printk.log.1 can be neither deleted nor
    // renamed over.
    PrintkFile file(dir_, 10, 1);
    append_all(file, {"12345678"});
    fs::create_directories(dir_ / "printk.log.1" / "in-the-way");

    const auto error = file.append("rotates");
    ASSERT_TRUE(error.has_value());
    EXPECT_NE(error->find("cannot rename " + (dir_ / "printk.log").string() + " to " +
                          (dir_ / "printk.log.1").string() + ": "),
              std::string::npos)
        << *error;
    EXPECT_EQ(read_text(dir_ / "printk.log"), "12345678\n");  // not written past max_size

    fs::remove_all(dir_ / "printk.log.1");
    append_all(file, {"rotates"});
    EXPECT_EQ(read_text(dir_ / "printk.log.1"), "12345678\n");
    EXPECT_EQ(read_text(dir_ / "printk.log"), "rotates\n");
}

TEST_F(PrintkFileTest, AFileDeletedFromUnderItIsRecreated) {
    PrintkFile file(dir_, 1 << 20, 5);
    append_all(file, {"first"});
    fs::remove(dir_ / "printk.log");
    append_all(file, {"second"});
    EXPECT_EQ(read_text(dir_ / "printk.log"), "second\n");
}

TEST_F(PrintkFileTest, TheWholeDirectoryDeletedIsRecreated) {
    PrintkFile file(dir_, 1 << 20, 5);
    append_all(file, {"first"});
    fs::remove_all(dir_);
    append_all(file, {"second"});
    EXPECT_EQ(read_text(dir_ / "printk.log"), "second\n");
}

TEST_F(PrintkFileTest, AFileMovedAwayByLogrotateIsReopenedAtThePath) {
    PrintkFile file(dir_, 1 << 20, 5);
    append_all(file, {"first"});
    // logrotate's default: rename, then (create) a new empty file.
    fs::rename(dir_ / "printk.log", dir_ / "printk.log-20240102");
    append_all(file, {"second"});
    touch(dir_ / "printk.log", "");
    append_all(file, {"third"});
    EXPECT_EQ(read_text(dir_ / "printk.log-20240102"), "first\n");
    EXPECT_EQ(read_text(dir_ / "printk.log"), "third\n");
}

TEST_F(PrintkFileTest, ATruncationInPlaceIsNoticed) {
    // logrotate's copytruncate keeps the inode; the size must be re-read, or
    // the next line would rotate a file that is now nearly empty.
    PrintkFile file(dir_, 100, 5);
    append_all(file, {line_of(30, 'a'), line_of(30, 'b'), line_of(30, 'c')});
    fs::resize_file(dir_ / "printk.log", 0);
    append_all(file, {line_of(30, 'd')});
    EXPECT_EQ(names_in(dir_), (std::set<std::string>{"printk.log"}));
    EXPECT_EQ(read_text(dir_ / "printk.log"), line_of(30, 'd') + "\n");
}

TEST_F(PrintkFileTest, FlushSyncsTheOpenFile) {
    PrintkFile file(dir_, 1 << 20, 5);
    append_all(file, {"one"});
    EXPECT_EQ(file.flush(), std::nullopt);
    append_all(file, {"two"});
    EXPECT_EQ(read_text(dir_ / "printk.log"), "one\ntwo\n");
}

// --- planted symbolic links (file_io.h) ------------------------------------------------

TEST_F(PrintkFileTest, ALinkPlantedForTheFileIsRefusedAndItsTargetUntouched) {
    fs::create_directories(dir_);
    const fs::path target = root_ / "shadow";
    touch(target, "keep\n");
    fs::create_symlink(target, dir_ / "printk.log");
    PrintkFile file(dir_, 1 << 20, 3);
    const auto error = file.append("planted");
    ASSERT_TRUE(error.has_value());
    EXPECT_NE(error->find("refusing to open " + (dir_ / "printk.log").string() + ": it is a symbolic link"),
              std::string::npos)
        << *error;
    EXPECT_EQ(read_text(target), "keep\n");
    EXPECT_TRUE(fs::is_symlink(dir_ / "printk.log"));

    // Once the link is gone the file is created and written as usual.
    fs::remove(dir_ / "printk.log");
    EXPECT_EQ(file.append("after"), std::nullopt);
    EXPECT_EQ(read_text(dir_ / "printk.log"), "after\n");
    EXPECT_EQ(read_text(target), "keep\n");
}

TEST_F(PrintkFileTest, ALinkInPlaceOfTheDirectoryIsRefused) {
    const fs::path elsewhere = root_ / "elsewhere";
    fs::create_directories(elsewhere);
    fs::create_symlink(elsewhere, dir_);
    PrintkFile file(dir_, 1 << 20, 3);
    const auto error = file.append("planted");
    ASSERT_TRUE(error.has_value());
    EXPECT_NE(error->find("refusing to open directory " + dir_.string() + ": it is a symbolic link"), std::string::npos)
        << *error;
    EXPECT_TRUE(names_in(elsewhere).empty());
}

TEST_F(PrintkFileTest, ALinkSwappedInForTheOpenFileIsNotWrittenThrough) {
    PrintkFile file(dir_, 1 << 20, 3);
    ASSERT_EQ(file.append("one"), std::nullopt);
    // Someone replaces printk.log by a link while the daemon holds it open.
    const fs::path target = root_ / "shadow";
    touch(target, "keep\n");
    fs::rename(dir_ / "printk.log", root_ / "moved.log");
    fs::create_symlink(target, dir_ / "printk.log");
    const auto error = file.append("two");
    ASSERT_TRUE(error.has_value());
    EXPECT_NE(error->find("symbolic link"), std::string::npos) << *error;
    EXPECT_EQ(read_text(target), "keep\n");
    EXPECT_EQ(read_text(root_ / "moved.log"), "one\n");
}

TEST_F(PrintkFileTest, RotationMovesAndDeletesLinksNotTheirTargets) {
    fs::create_directories(dir_);
    const fs::path target = root_ / "shadow";
    touch(target, "keep\n");
    fs::create_symlink(target, dir_ / "printk.log.1");  // shifted up to .2 by the rotation
    fs::create_symlink(target, dir_ / "printk.log.2");  // past retention: deleted
    PrintkFile file(dir_, 64, 2);
    append_all(file, {line_of(40, 'a'), line_of(40, 'b')});
    EXPECT_EQ(read_text(target), "keep\n");
    EXPECT_EQ(read_text(dir_ / "printk.log"), line_of(40, 'b') + "\n");
    EXPECT_EQ(read_text(dir_ / "printk.log.1"), line_of(40, 'a') + "\n");
    EXPECT_TRUE(fs::is_symlink(dir_ / "printk.log.2"));  // the old .1 link, moved, never followed
    EXPECT_EQ(names_in(dir_), (std::set<std::string>{"printk.log", "printk.log.1", "printk.log.2"}));
}

}  // namespace
}  // namespace kleak::service
