// libFuzzer target: reading a recording (`kleakd report DIR`): meta.json,
// then the per-CPU files replayed through the pipeline, exactly as
// replay_recording() does with files it maps.
//
// Input layout (tests/fuzz/make_corpus.py writes real recordings this way):
// u32 length + meta.json text, then for each CPU u32 length + file bytes,
// lengths little-endian. A length past the end takes what is left.
// Everything a bad recording can do must end in std::runtime_error (the
// report command's "kleakd: <message>"), never in a crash.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <spdlog/spdlog.h>

#include "app/recording_io.h"
#include "core/pipeline.h"

namespace {

// The next length-prefixed piece of `input`.
std::span<const std::byte> take_piece(std::span<const std::byte>& input) {
    std::uint32_t length = 0;
    const std::size_t have = std::min(input.size(), sizeof length);
    std::memcpy(&length, input.data(), have);
    input = input.subspan(have);
    const std::span<const std::byte> piece = input.first(std::min<std::size_t>(length, input.size()));
    input = input.subspan(piece.size());
    return piece;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    spdlog::set_level(spdlog::level::off);  // "ignoring a truncated last record" on every other input
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::span<const std::byte> input(reinterpret_cast<const std::byte*>(data), size);
    const std::span<const std::byte> meta_bytes = take_piece(input);
    const std::string_view meta_text(reinterpret_cast<const char*>(meta_bytes.data()), meta_bytes.size());
    std::vector<kleak::RecordingFile> files;
    while (!input.empty()) files.push_back({"kleak" + std::to_string(files.size()), take_piece(input), {}});
    try {
        const kleak::core::RecordingMeta meta = kleak::parse_recording_meta(meta_text, "meta.json");
        // A real recording has one file per CPU; a meta.json claiming more
        // fails replay at the first missing one, as it would here.
        kleak::core::Pipeline pipeline(meta.cpus);
        kleak::replay_recording_files(files, meta, pipeline, std::chrono::milliseconds(10));
        pipeline.settle();
    } catch (const std::runtime_error&) {
        // The reader's way of refusing a bad recording.
    }
    return 0;
}
