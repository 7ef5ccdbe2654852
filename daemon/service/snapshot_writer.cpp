#include "service/snapshot_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <utility>

#include "kernel/unique_fd.h"
#include "service/file_io.h"

namespace kleak::service {

namespace {

constexpr std::string_view kSnapshotPrefix = "snapshot-";
constexpr std::string_view kSnapshotSuffix = ".json";
constexpr std::string_view kStampShape = "YYYYMMDDTHHMMSS.mmmZ";  // T, '.' and Z literal, the rest digits
constexpr std::string_view kLatestName = "latest.json";
constexpr std::string_view kTempPrefix = ".kleakd-";
constexpr std::string_view kTempSuffix = ".tmp";
constexpr mode_t kFileMode = 0644;
// Bounds the name-picking loops; reaching it means something else keeps
// creating the names we pick.
constexpr unsigned kMaxNameAttempts = 1000;

bool is_digit(char c) { return c >= '0' && c <= '9'; }

bool matches_stamp_shape(std::string_view stamp) {
    if (stamp.size() != kStampShape.size()) return false;
    for (std::size_t i = 0; i < stamp.size(); ++i) {
        const char expected = kStampShape[i];
        const bool literal = expected == 'T' || expected == '.' || expected == 'Z';
        if (literal ? stamp[i] != expected : !is_digit(stamp[i])) return false;
    }
    return true;
}


// A file under a temporary name in the snapshot directory; the name is
// unlinked on destruction unless forgotten (renamed away, or never created).
class TempFile {
public:
    TempFile(int directory_fd, std::string name) : directory_fd_(directory_fd), name_(std::move(name)) {}
    TempFile(TempFile&& other) noexcept : directory_fd_(other.directory_fd_), name_(std::exchange(other.name_, {})) {}
    TempFile& operator=(TempFile&&) = delete;
    ~TempFile() {
        if (!name_.empty()) ::unlinkat(directory_fd_, name_.c_str(), 0);
    }

    const std::string& name() const { return name_; }
    void forget() { name_.clear(); }

private:
    int directory_fd_;
    std::string name_;
};

// The snapshot directory, open for *at() calls and for fsync.
class SnapshotDirectory {
public:
    SnapshotDirectory(std::filesystem::path path, UniqueFd fd) : path_(std::move(path)), fd_(std::move(fd)) {}

    const std::filesystem::path& path() const { return path_; }

    // Writes `content` to a new temporary file (O_EXCL, mode 0644) and
    // fsyncs it. On failure sets `error` and leaves no file behind.
    std::optional<TempFile> write_temp_file(std::string_view content, std::uint64_t& counter,
                                            std::string& error) const {
        for (unsigned attempt = 0; attempt < kMaxNameAttempts; ++attempt) {
            TempFile file(fd_.get(), std::string(kTempPrefix) + std::to_string(::getpid()) + "-" +
                                         std::to_string(counter++) + std::string(kTempSuffix));
            const UniqueFd out(
                ::openat(fd_.get(), file.name().c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, kFileMode));
            if (!out) {
                const int err = errno;
                file.forget();  // never created: the name may be someone else's
                if (err == EEXIST) continue;
                error = failure("cannot create", path_ / file.name(), err);
                return std::nullopt;
            }
            int err = write_all(out.get(), content);
            if (err == 0 && ::fsync(out.get()) != 0) err = errno;
            if (err != 0) {
                error = failure("cannot write", path_ / file.name(), err);
                return std::nullopt;
            }
            return file;
        }
        error = "cannot create a temporary file in " + path_.string() + ": every name tried exists";
        return std::nullopt;
    }

    // Gives `file` the first free name from `name_for(0, 1, ...)`, never
    // replacing an existing file: link() refuses an existing target where
    // rename() would overwrite it. Returns the name used.
    template <typename NameFor>
    std::optional<std::string> link_to_free_name(TempFile& file, NameFor name_for, std::string& error) const {
        for (unsigned sequence = 0; sequence < kMaxNameAttempts; ++sequence) {
            std::string name = name_for(sequence);
            if (::linkat(fd_.get(), file.name().c_str(), fd_.get(), name.c_str(), 0) == 0) return name;
            if (errno != EEXIST) {
                error = failure("cannot create", path_ / name, errno);
                return std::nullopt;
            }
        }
        error = "cannot name a snapshot in " + path_.string() + ": " + std::to_string(kMaxNameAttempts) +
                " snapshots exist for this millisecond";
        return std::nullopt;
    }

    // Atomically replaces `name` with `file`.
    std::optional<std::string> rename_over(TempFile& file, std::string_view name) const {
        const std::string target(name);
        if (::renameat(fd_.get(), file.name().c_str(), fd_.get(), target.c_str()) != 0)
            return failure("cannot replace", path_ / target, errno);
        file.forget();
        return std::nullopt;
    }

    // Makes the directory entries just created or replaced durable.
    std::optional<std::string> sync() const {
        if (::fsync(fd_.get()) != 0) return failure("cannot fsync directory", path_, errno);
        return std::nullopt;
    }

    // Deletes `names`; reports the first failure, still trying the rest.
    std::optional<std::string> remove(const std::vector<std::string>& names) const {
        std::optional<std::string> first_error;
        for (const std::string& name : names) {
            if (::unlinkat(fd_.get(), name.c_str(), 0) != 0 && errno != ENOENT && !first_error)
                first_error = failure("cannot delete", path_ / name, errno);
        }
        return first_error;
    }

    std::vector<std::string> list(std::string& error) const {
        std::vector<std::string> names;
        if (auto list_error = list_directory(fd_.get(), path_, names)) error = std::move(*list_error);
        return names;
    }

private:
    std::filesystem::path path_;
    UniqueFd fd_;
};

}  // namespace

std::string snapshot_file_name(std::chrono::system_clock::time_point time, unsigned sequence) {
    using namespace std::chrono;
    const auto since_epoch = floor<milliseconds>(time.time_since_epoch());
    const auto day = floor<days>(since_epoch);
    const year_month_day date{sys_days{day}};
    const hh_mm_ss clock{since_epoch - day};
    char stamp[64];
    std::snprintf(stamp, sizeof stamp, "%04d%02u%02uT%02d%02d%02d.%03dZ", static_cast<int>(date.year()),
                  static_cast<unsigned>(date.month()), static_cast<unsigned>(date.day()),
                  static_cast<int>(clock.hours().count()), static_cast<int>(clock.minutes().count()),
                  static_cast<int>(clock.seconds().count()), static_cast<int>(clock.subseconds().count()));
    return std::string(kSnapshotPrefix) + stamp + (sequence == 0 ? "" : "-" + std::to_string(sequence)) +
           std::string(kSnapshotSuffix);
}

std::optional<SnapshotName> parse_snapshot_file_name(std::string_view name) {
    if (!name.starts_with(kSnapshotPrefix) || !name.ends_with(kSnapshotSuffix)) return std::nullopt;
    name.remove_prefix(kSnapshotPrefix.size());
    name.remove_suffix(kSnapshotSuffix.size());
    if (name.size() < kStampShape.size() || !matches_stamp_shape(name.substr(0, kStampShape.size())))
        return std::nullopt;
    SnapshotName parsed{std::string(name.substr(0, kStampShape.size())), 0};
    const std::string_view rest = name.substr(kStampShape.size());
    if (rest.empty()) return parsed;
    // "-N": a later snapshot in the same millisecond.
    if (rest.size() < 2 || rest.front() != '-' || !std::all_of(rest.begin() + 1, rest.end(), is_digit))
        return std::nullopt;
    const auto [end, ec] = std::from_chars(rest.data() + 1, rest.data() + rest.size(), parsed.sequence);
    if (ec != std::errc{} || end != rest.data() + rest.size()) return std::nullopt;
    return parsed;
}

std::filesystem::path latest_snapshot_path(const std::filesystem::path& directory) { return directory / kLatestName; }

bool is_temp_file_name(std::string_view name) {
    return name.size() > kTempPrefix.size() + kTempSuffix.size() && name.starts_with(kTempPrefix) &&
           name.ends_with(kTempSuffix);
}

std::vector<std::string> files_to_prune(std::vector<std::string> names, unsigned retention) {
    std::vector<std::pair<SnapshotName, std::string>> snapshots;
    std::vector<std::string> doomed;
    for (std::string& name : names) {
        if (auto parsed = parse_snapshot_file_name(name))
            snapshots.emplace_back(std::move(*parsed), std::move(name));
        else if (is_temp_file_name(name))
            doomed.push_back(std::move(name));
    }
    if (snapshots.size() > retention) {
        const auto oldest_kept = snapshots.end() - retention;
        std::nth_element(snapshots.begin(), oldest_kept, snapshots.end());
        for (auto it = snapshots.begin(); it != oldest_kept; ++it) doomed.push_back(std::move(it->second));
    }
    return doomed;
}

SnapshotWriter::SnapshotWriter(std::filesystem::path directory, unsigned retention) {
    reconfigure(std::move(directory), retention);
}

void SnapshotWriter::reconfigure(std::filesystem::path directory, unsigned retention) {
    directory_ = std::move(directory);
    retention_ = std::max(1u, retention);
}

std::optional<std::string> SnapshotWriter::write(const nlohmann::json& document,
                                                 std::chrono::system_clock::time_point now) noexcept {
    try {
        // Strings the kernel handed us (symbol or module names) are not
        // guaranteed UTF-8; replace bad bytes rather than lose the snapshot.
        return write_or_throw(
            document.dump(2, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace) + "\n", now);
    } catch (const std::exception& e) {  // allocation failure: the daemon keeps running and retries next time
        return "cannot write a snapshot in " + directory_.string() + ": " + e.what();
    }
}

std::optional<std::string> SnapshotWriter::write_text(std::string_view content,
                                                      std::chrono::system_clock::time_point now) noexcept {
    try {
        return write_or_throw(content, now);
    } catch (const std::exception& e) {
        return "cannot write a snapshot in " + directory_.string() + ": " + e.what();
    }
}

std::optional<std::string> SnapshotWriter::write_or_throw(std::string_view content,
                                                          std::chrono::system_clock::time_point now) {
    UniqueFd fd;
    if (auto error = open_directory(directory_, fd)) return error;
    const SnapshotDirectory directory(directory_, std::move(fd));
    std::string error;

    {
        std::optional<TempFile> snapshot = directory.write_temp_file(content, temp_files_created_, error);
        if (!snapshot) return error;
        const auto name_for = [now](unsigned sequence) { return snapshot_file_name(now, sequence); };
        if (!directory.link_to_free_name(*snapshot, name_for, error)) return error;
        // Leaving scope unlinks the temporary name; the snapshot keeps its own.
    }
    if (auto sync_error = directory.sync()) return sync_error;

    std::optional<TempFile> latest = directory.write_temp_file(content, temp_files_created_, error);
    if (!latest) return error;
    if (auto rename_error = directory.rename_over(*latest, kLatestName)) return rename_error;
    if (auto sync_error = directory.sync()) return sync_error;

    std::vector<std::string> names = directory.list(error);
    if (!error.empty()) return error;
    return directory.remove(files_to_prune(std::move(names), retention_));
}

}  // namespace kleak::service
