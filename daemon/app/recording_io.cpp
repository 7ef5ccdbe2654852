#include "core/frame_order.h"
#include "core/record_batch.h"
#include "app/recording_io.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include "kernel/startup_error.h"
#include "service/file_io.h"
#include "kleak_abi.h"

namespace kleak {

namespace {

std::string_view as_chars(std::span<const std::byte> bytes) {
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

constexpr std::size_t kFlushThreshold = 1 << 20;  // write when a CPU buffer passes 1 MiB

}  // namespace

RecordingWriter::RecordingWriter(std::filesystem::path dir, unsigned cpu_count) : dir_(std::move(dir)) {
    // Under the directory's fd and without following links (service/file_io.h):
    // `kleakd record` runs as root, and O_TRUNC through a planted link would
    // empty whatever it points at.
    if (auto error = service::open_directory(dir_, dir_fd_, 0755)) throw StartupError("output directory: " + *error);
    for (unsigned cpu = 0; cpu < cpu_count; ++cpu) {
        const std::string name = core::cpu_file_name(cpu);
        const std::filesystem::path path = dir_ / name;
        CpuFile file;
        file.fd.reset(
            ::openat(dir_fd_.get(), name.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644));
        if (!file.fd) throw StartupError(service::open_failure("create", dir_fd_.get(), name, path, errno));
        const auto header = core::encode_file_header({core::kRecordingFormatVersion, KLEAK_ABI_VERSION, cpu});
        if (const int err = -service::write_all(file.fd.get(), as_chars(header)); err != 0)
            throw StartupError(describe_errno("cannot write " + path.string(), err));
        file.buffer.reserve(kFlushThreshold + 4096);
        files_.push_back(std::move(file));
    }
}

void RecordingWriter::on_record(unsigned cpu, std::span<const std::byte> record) {
    CpuFile& file = files_[std::min<std::size_t>(cpu, files_.size() - 1)];
    core::append_frame(file.buffer, record);
    // A time mark is not a record of an event (Pipeline::records() does not count it either).
    if (!core::is_time_mark(record)) ++file.frames;
}

void RecordingWriter::collect_sites(const std::vector<std::byte>& buffer) {
    core::FrameReader reader(buffer);
    std::span<const std::byte> record;
    core::Event event;
    while (reader.next(record) == core::FrameStatus::ok) {
        if (core::decode_record(record, 0, event) == core::DecodeStatus::ok) sites_.insert(event.call_site);
    }
}

int RecordingWriter::flush() {
    int result = 0;
    for (CpuFile& file : files_) {
        if (file.buffer.empty()) continue;
        core::sort_frames_by_time(file.buffer);  // one drain's worth: see frame_order.h
        collect_sites(file.buffer);
        const int err = -service::write_all(file.fd.get(), as_chars(file.buffer));
        if (err == 0) {
            records_ += file.frames;
            bytes_written_ += file.buffer.size();
        } else {
            records_lost_ += file.frames;
            if (write_errors_++ % 100 == 0)  // rate-limited
                spdlog::warn("writing the recording failed: {}; {} records lost so far", std::strerror(-err),
                             records_lost_);
            result = err;
        }
        file.buffer.clear();
        file.frames = 0;
    }
    return result;
}

bool RecordingWriter::finish(core::RecordingMeta meta, core::Symbolizer& symbolizer) {
    flush();
    for (CpuFile& file : files_) {
        if (::fsync(file.fd.get()) != 0) spdlog::warn("fsync of the recording failed: {}", std::strerror(errno));
    }
    for (const std::uint64_t site : sites_) meta.symbols[site] = symbolizer.resolve(site);
    meta.records = records_;

    constexpr const char* kTemp = "meta.json.tmp";
    const std::filesystem::path tmp = dir_ / kTemp;
    {
        const UniqueFd out(::openat(dir_fd_.get(), kTemp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644));
        if (!out) {
            spdlog::error("{}", service::open_failure("create", dir_fd_.get(), kTemp, tmp, errno));
            return false;
        }
        if (const int err = service::write_all(out.get(), core::meta_to_json(meta).dump(1) + "\n")) {
            spdlog::error("{}", service::failure("cannot write", tmp, err));
            return false;
        }
    }
    // renameat replaces a link named meta.json, never its target.
    if (::renameat(dir_fd_.get(), kTemp, dir_fd_.get(), "meta.json") != 0) {
        spdlog::error("{}", service::failure("cannot rename into place", tmp, errno));
        return false;
    }
    return records_lost_ == 0;
}

core::RecordingMeta parse_recording_meta(std::string_view text, const std::string& name) {
    nlohmann::json json;
    try {
        json = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        throw std::runtime_error(name + " is not valid JSON: " + e.what());
    }
    core::RecordingMeta meta = core::meta_from_json(json);
    if (meta.abi_version < KLEAK_ABI_OLDEST_READABLE || meta.abi_version > KLEAK_ABI_VERSION)
        throw std::runtime_error("recording has record ABI version " + std::to_string(meta.abi_version) +
                                 ", this kleakd reads versions " + std::to_string(KLEAK_ABI_OLDEST_READABLE) + " to " +
                                 std::to_string(KLEAK_ABI_VERSION));
    return meta;
}

core::RecordingMeta read_recording_meta(const std::filesystem::path& dir) {
    const std::filesystem::path path = dir / "meta.json";
    std::ifstream in(path);
    if (!in)
        throw std::runtime_error("cannot read " + path.string() + ": " + std::strerror(errno) +
                                 " (is this a directory written by `kleakd record`?)");
    std::ostringstream text;
    text << in.rdbuf();
    if (!in) throw std::runtime_error("cannot read " + path.string() + ": " + std::strerror(errno));
    return parse_recording_meta(text.str(), path.string());
}

namespace {

// A read-only mapping of a whole recording file: replay reads frames in place,
// with no copy and no buffer management.
class MappedFile {
public:
    explicit MappedFile(const std::filesystem::path& path) {
        UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
        if (!fd) throw std::runtime_error("cannot read " + path.string() + ": " + std::strerror(errno));
        struct stat st {};
        if (::fstat(fd.get(), &st) != 0) throw std::runtime_error("cannot stat " + path.string() + ": " + std::strerror(errno));
        size_ = static_cast<std::size_t>(st.st_size);
        if (size_ == 0) return;
        void* data = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd.get(), 0);
        if (data == MAP_FAILED) throw std::runtime_error("cannot map " + path.string() + ": " + std::strerror(errno));
        data_ = static_cast<const std::byte*>(data);
        ::madvise(data, size_, MADV_SEQUENTIAL);
    }
    ~MappedFile() {
        if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
    }
    MappedFile(MappedFile&& other) noexcept
        : data_(std::exchange(other.data_, nullptr)),
          size_(std::exchange(other.size_, 0)),
          released_(std::exchange(other.released_, 0)) {}
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    std::span<const std::byte> bytes() const { return {data_, size_}; }

    // Drops the pages before `offset` from this process (they stay in the
    // page cache): replaying a large recording must not look like a large RSS.
    void release_before(std::size_t offset) {
        const std::size_t page = 4096;
        const std::size_t end = offset / page * page;
        if (data_ && end > released_) {
            ::madvise(const_cast<std::byte*>(data_) + released_, end - released_, MADV_DONTNEED);
            released_ = end;
        }
    }

private:
    const std::byte* data_ = nullptr;
    std::size_t size_ = 0;
    std::size_t released_ = 0;
};

}  // namespace

void replay_recording(const std::filesystem::path& dir, const core::RecordingMeta& meta, core::Pipeline& pipeline,
                      std::chrono::nanoseconds holdback) {
    std::vector<MappedFile> mapped;
    std::vector<RecordingFile> files;
    mapped.reserve(meta.cpus);
    for (unsigned cpu = 0; cpu < meta.cpus; ++cpu) {
        const std::filesystem::path path = dir / core::cpu_file_name(cpu);
        MappedFile& file = mapped.emplace_back(path);
        files.push_back({path.string(), file.bytes(), [&file](std::size_t offset) { file.release_before(offset); }});
    }
    replay_recording_files(files, meta, pipeline, holdback);
}

void replay_recording_files(std::span<const RecordingFile> files, const core::RecordingMeta& meta,
                            core::Pipeline& pipeline, std::chrono::nanoseconds holdback) {
    if (files.size() != meta.cpus)
        throw std::runtime_error("the recording has " + std::to_string(files.size()) + " per-CPU files, meta.json says " +
                                 std::to_string(meta.cpus) + " CPUs");
    struct Input {
        const RecordingFile* file;
        unsigned cpu = 0;
        std::size_t offset = 0;  // next unread byte
        bool done = false;
    };
    std::vector<Input> inputs;
    for (unsigned cpu = 0; cpu < meta.cpus; ++cpu) {
        const RecordingFile& file = files[cpu];
        core::RecordingFileHeader header;
        if (auto err = core::decode_file_header(file.bytes, header)) throw std::runtime_error(file.name + ": " + *err);
        if (header.abi_version != meta.abi_version)
            throw std::runtime_error(file.name + ": record ABI version " + std::to_string(header.abi_version) +
                                     " differs from meta.json's " + std::to_string(meta.abi_version));
        if (header.cpu != cpu) throw std::runtime_error(file.name + ": header says CPU " + std::to_string(header.cpu));
        inputs.push_back({&file, cpu, core::kRecordingHeaderSize, false});
    }

    // Files are merged a slice at a time, like drains of live rings, so the
    // merge's staging stays small however long the recording is.
    const auto holdback_ns = static_cast<std::uint64_t>(holdback.count());
    bool any_open = true;
    while (any_open) {
        any_open = false;
        for (Input& input : inputs) {
            if (input.done) continue;
            const auto all = input.file->bytes;
            const std::size_t end = std::min(all.size(), input.offset + kReplaySliceBytes);
            core::FrameReader reader(all.subspan(input.offset, end - input.offset));
            const core::FrameStatus status = pipeline.on_frames(input.cpu, reader);
            if (status == core::FrameStatus::corrupt)
                throw std::runtime_error(input.file->name + ": corrupt frame at offset " +
                                         std::to_string(input.offset + reader.consumed()));
            input.offset += reader.consumed();
            if (input.file->release_before) input.file->release_before(input.offset);
            if (end == all.size()) {
                input.done = true;
                if (input.offset != all.size())
                    spdlog::warn("{}: ignoring a truncated last record ({} bytes)", input.file->name,
                                 all.size() - input.offset);
            } else {
                any_open = true;
            }
        }
        // Every input still open has been read up to its newest timestamp:
        // nothing older than the oldest of those (less the in-CPU skew a
        // live ring can have) can still come.
        std::uint64_t watermark = std::numeric_limits<std::uint64_t>::max();
        for (const Input& input : inputs)
            if (!input.done) watermark = std::min(watermark, pipeline.newest_ts(input.cpu));
        if (any_open) pipeline.release_until(watermark > holdback_ns ? watermark - holdback_ns : 0);
    }
    pipeline.finish();
}

}  // namespace kleak
