// Writing and replaying recordings (layout: core/recording_format.h).
#pragma once

#include <absl/container/flat_hash_set.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/pipeline.h"
#include "core/recording_format.h"
#include "kernel/ring_consumer.h"
#include "kernel/unique_fd.h"

namespace kleak {

// The ring sink of `kleakd record`: on_record() only appends a frame to the
// CPU's buffer; flush() writes buffers out between drains.
class RecordingWriter final : public RecordSink {
public:
    // Creates `dir` if needed and the per-CPU files in it (truncating old
    // ones). Throws StartupError naming the path when it is not writable, or
    // when `dir` or one of the files is a symbolic link (never followed).
    RecordingWriter(std::filesystem::path dir, unsigned cpu_count);

    void on_record(unsigned cpu, std::span<const std::byte> record) override;

    // Writes what is buffered. Returns 0, or a negative errno (counted; the
    // records of a failed write are lost and reported by finish()).
    int flush();

    // Flushes, fsyncs, and writes meta.json (atomically) with the symbols of
    // every call site seen. Returns false if any record could not be written.
    bool finish(core::RecordingMeta meta, core::Symbolizer& symbolizer);

    std::uint64_t records() const { return records_; }
    std::uint64_t bytes_written() const { return bytes_written_; }
    std::uint64_t records_lost_to_io() const { return records_lost_; }

private:
    struct CpuFile {
        UniqueFd fd;
        std::vector<std::byte> buffer;
        std::uint64_t frames = 0;  // frames in buffer
    };
    void collect_sites(const std::vector<std::byte>& buffer);

    std::filesystem::path dir_;
    UniqueFd dir_fd_;  // every file is created under it, never through a link
    std::vector<CpuFile> files_;
    absl::flat_hash_set<std::uint64_t> sites_;
    std::uint64_t records_ = 0;
    std::uint64_t bytes_written_ = 0;
    std::uint64_t records_lost_ = 0;
    std::uint64_t write_errors_ = 0;
};

// Reads and checks DIR/meta.json. Throws std::runtime_error saying what is wrong.
core::RecordingMeta read_recording_meta(const std::filesystem::path& dir);
// The same for meta.json's text; `name` is what messages call it.
core::RecordingMeta parse_recording_meta(std::string_view text, const std::string& name);

// Bytes of each file per merge round of replay_recording(). Small enough that
// the tracking thread never runs dry while the merging thread decodes a round
// (4 MiB rounds took ~5 ms to decode against ~2.6 ms of tracking queued:
// replay ran at 17.9M records/s against 23.0M with 1 MiB, interleaved medians
// of 8). Which records count as late depends on it (the rounds' watermarks).
inline constexpr std::size_t kReplaySliceBytes = 1 << 20;

// Streams every per-CPU file of the recording in `dir` through `pipeline`
// (built for meta.cpus CPUs), chunk by chunk, and finishes it. Throws
// std::runtime_error naming the file and offset of a bad recording.
void replay_recording(const std::filesystem::path& dir, const core::RecordingMeta& meta, core::Pipeline& pipeline,
                      std::chrono::nanoseconds holdback);

// One per-CPU file's bytes, however they were read (replay_recording maps
// them; the fuzz target, tests/fuzz, holds them in memory).
struct RecordingFile {
    std::string name;  // for messages
    std::span<const std::byte> bytes;
    // Optional: called with the offset below which bytes are no longer needed.
    std::function<void(std::size_t)> release_before;
};

// replay_recording() over files already in memory, one per CPU of `meta`.
void replay_recording_files(std::span<const RecordingFile> files, const core::RecordingMeta& meta,
                            core::Pipeline& pipeline, std::chrono::nanoseconds holdback);

}  // namespace kleak
