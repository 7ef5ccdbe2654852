// Recording format: per-CPU file header, length-prefixed frames, meta.json.
#include <gtest/gtest.h>

#include <cstring>
#include <stdexcept>

#include "core/recording_format.h"
#include "test_helpers.h"

namespace kleak::core {
namespace {

using test::alloc_event;
using test::encode_event;
using test::free_event;

TEST(RecordingFormat, CpuFileNames) {
    EXPECT_EQ(cpu_file_name(0), "kleak0");
    EXPECT_EQ(cpu_file_name(12), "kleak12");
}

TEST(FileHeader, RoundTrip) {
    const RecordingFileHeader header{.format_version = kRecordingFormatVersion, .abi_version = KLEAK_ABI_VERSION, .cpu = 7};
    const auto bytes = encode_file_header(header);

    RecordingFileHeader decoded{.format_version = 0, .abi_version = 0, .cpu = 0};
    EXPECT_EQ(decode_file_header(bytes, decoded), std::nullopt);
    EXPECT_EQ(decoded.format_version, kRecordingFormatVersion);
    EXPECT_EQ(decoded.abi_version, static_cast<std::uint32_t>(KLEAK_ABI_VERSION));
    EXPECT_EQ(decoded.cpu, 7u);
}

TEST(FileHeader, Layout) {
    const auto bytes = encode_file_header({.format_version = 1, .abi_version = 0x01020304, .cpu = 0x0a0b0c0d});
    ASSERT_EQ(bytes.size(), 32u);
    EXPECT_EQ(std::memcmp(bytes.data(), "KLEAKREC", 8), 0);
    std::uint32_t word = 0;
    std::memcpy(&word, bytes.data() + 8, 4);
    EXPECT_EQ(word, 1u);
    std::memcpy(&word, bytes.data() + 12, 4);
    EXPECT_EQ(word, 0x01020304u);
    std::memcpy(&word, bytes.data() + 16, 4);
    EXPECT_EQ(word, 0x0a0b0c0du);
    for (std::size_t i = 20; i < bytes.size(); ++i) EXPECT_EQ(bytes[i], std::byte{0}) << "reserved byte " << i;
}

TEST(FileHeader, TooShort) {
    const auto bytes = encode_file_header({});
    RecordingFileHeader decoded;
    EXPECT_EQ(decode_file_header(std::span(bytes).first(31), decoded), "file is shorter than a recording header");
    EXPECT_EQ(decode_file_header({}, decoded), "file is shorter than a recording header");
}

TEST(FileHeader, BadMagic) {
    auto bytes = encode_file_header({});
    bytes[7] = std::byte{'X'};
    RecordingFileHeader decoded;
    EXPECT_EQ(decode_file_header(bytes, decoded), "not a kleakd recording (bad magic)");
}

TEST(FileHeader, WrongFormatVersion) {
    const auto bytes = encode_file_header({.format_version = 2, .abi_version = 1, .cpu = 0});
    RecordingFileHeader decoded;
    EXPECT_EQ(decode_file_header(bytes, decoded), "recording format version 2, this kleakd reads 1");
}

TEST(FileHeader, TrailingBytesAfterTheHeaderAreNotItsConcern) {
    std::vector<std::byte> file;
    const auto header = encode_file_header({.format_version = 1, .abi_version = 1, .cpu = 3});
    file.insert(file.end(), header.begin(), header.end());
    file.resize(file.size() + 100, std::byte{0x5a});
    RecordingFileHeader decoded;
    EXPECT_EQ(decode_file_header(file, decoded), std::nullopt);
    EXPECT_EQ(decoded.cpu, 3u);
}

// Three real records of different sizes, framed back to back.
struct FramedRecords {
    std::vector<std::vector<std::byte>> records;
    std::vector<std::byte> buffer;
    std::vector<std::size_t> frame_ends;  // offset just past each frame
};

FramedRecords three_frames() {
    FramedRecords f;
    f.records.push_back(encode_event(alloc_event({.ts = 1, .ptr = 0x1000, .site = 0xffffffff81000010, .req = 8, .alloc = 8})));
    f.records.push_back(encode_event(free_event({.ts = 2, .ptr = 0x1000, .site = 0xffffffff81000020})));
    f.records.push_back(encode_event(alloc_event(
        {.ts = 3, .ptr = 0x2000, .site = 0xffffffff81000030, .req = 100, .alloc = 128, .kind = EventKind::cache_alloc})));
    for (const auto& record : f.records) {
        append_frame(f.buffer, record);
        f.frame_ends.push_back(f.buffer.size());
    }
    return f;
}

std::vector<std::byte> copy_of(std::span<const std::byte> bytes) { return {bytes.begin(), bytes.end()}; }

TEST(Frames, LayoutIsLengthThenRecord) {
    std::vector<std::byte> buffer;
    const std::vector<std::byte> record{std::byte{1}, std::byte{2}, std::byte{3}};
    append_frame(buffer, record);
    ASSERT_EQ(buffer.size(), 7u);
    std::uint32_t len = 0;
    std::memcpy(&len, buffer.data(), 4);
    EXPECT_EQ(len, 3u);
    EXPECT_EQ(copy_of(std::span(buffer).subspan(4)), record);
}

TEST(Frames, ReadsBackEveryFrameThenNeedsMore) {
    const FramedRecords f = three_frames();
    ASSERT_EQ(f.frame_ends, (std::vector<std::size_t>{52, 88, 140}));
    FrameReader reader(f.buffer);
    std::span<const std::byte> record;
    for (std::size_t i = 0; i < f.records.size(); ++i) {
        ASSERT_EQ(reader.next(record), FrameStatus::ok) << "frame " << i;
        EXPECT_EQ(copy_of(record), f.records[i]);
        EXPECT_EQ(reader.consumed(), f.frame_ends[i]);
    }
    EXPECT_EQ(reader.next(record), FrameStatus::need_more);
    EXPECT_EQ(reader.consumed(), f.buffer.size());
}

TEST(Frames, EmptyFrameIsAFrame) {
    std::vector<std::byte> buffer;
    append_frame(buffer, {});
    FrameReader reader(buffer);
    std::span<const std::byte> record;
    ASSERT_EQ(reader.next(record), FrameStatus::ok);
    EXPECT_TRUE(record.empty());
    EXPECT_EQ(reader.consumed(), 4u);
}

TEST(Frames, BufferEndingMidFrameNeedsMoreThenResumes) {
    // Cut the stream at every byte offset (inside a length field and inside a
    // record): the reader hands out whole frames only, and a reader over the
    // full buffer from consumed() picks up exactly where it stopped.
    const FramedRecords f = three_frames();
    for (std::size_t cut = 0; cut <= f.buffer.size(); ++cut) {
        SCOPED_TRACE("cut at " + std::to_string(cut));
        FrameReader partial(std::span(f.buffer).first(cut));
        std::span<const std::byte> record;
        std::size_t whole = 0;
        while (whole < f.frame_ends.size() && f.frame_ends[whole] <= cut) ++whole;

        for (std::size_t i = 0; i < whole; ++i) {
            ASSERT_EQ(partial.next(record), FrameStatus::ok);
            EXPECT_EQ(copy_of(record), f.records[i]);
        }
        const std::size_t resume_at = whole == 0 ? 0 : f.frame_ends[whole - 1];
        EXPECT_EQ(partial.next(record), FrameStatus::need_more);
        EXPECT_EQ(partial.next(record), FrameStatus::need_more);  // asking again changes nothing
        ASSERT_EQ(partial.consumed(), resume_at);

        FrameReader resumed(std::span(f.buffer).subspan(partial.consumed()));
        for (std::size_t i = whole; i < f.records.size(); ++i) {
            ASSERT_EQ(resumed.next(record), FrameStatus::ok);
            EXPECT_EQ(copy_of(record), f.records[i]);
        }
        EXPECT_EQ(resumed.next(record), FrameStatus::need_more);
        EXPECT_EQ(partial.consumed() + resumed.consumed(), f.buffer.size());
    }
}

TEST(Frames, CorruptLength) {
    FramedRecords f = three_frames();
    // Overwrite the second frame's length with one no record can have.
    const std::uint32_t bogus = kMaxFrameSize + 1;
    std::memcpy(f.buffer.data() + f.frame_ends[0], &bogus, 4);

    FrameReader reader(f.buffer);
    std::span<const std::byte> record;
    ASSERT_EQ(reader.next(record), FrameStatus::ok);
    EXPECT_EQ(reader.next(record), FrameStatus::corrupt);
    EXPECT_EQ(reader.consumed(), f.frame_ends[0]);
    EXPECT_EQ(reader.next(record), FrameStatus::corrupt);  // stays put, never skips ahead

    const std::uint32_t huge = 0xffffffff;
    std::memcpy(f.buffer.data(), &huge, 4);
    FrameReader from_start(f.buffer);
    EXPECT_EQ(from_start.next(record), FrameStatus::corrupt);
    EXPECT_EQ(from_start.consumed(), 0u);
}

TEST(Frames, LargestLegalLengthIsNotCorrupt) {
    std::vector<std::byte> buffer(4);
    const std::uint32_t largest = kMaxFrameSize;
    std::memcpy(buffer.data(), &largest, 4);
    FrameReader reader(buffer);
    std::span<const std::byte> record;
    EXPECT_EQ(reader.next(record), FrameStatus::need_more);

    buffer.resize(4 + kMaxFrameSize);
    FrameReader full(buffer);
    ASSERT_EQ(full.next(record), FrameStatus::ok);
    EXPECT_EQ(record.size(), kMaxFrameSize);
}

RecordingMeta sample_meta() {
    RecordingMeta meta;
    meta.abi_version = KLEAK_ABI_VERSION;
    meta.kleakd_version = "0.1.0";
    meta.kernel_release = "6.1.0-13-amd64";
    meta.boot_id = "3f1c1d2e-8a6b-4f57-9d0e-2b7c5a9e4f11";
    meta.hostname = "build-01";
    meta.cpus = 4;
    meta.buffer_size = 8u << 20;
    meta.start_ns = 1'000'000'000;
    meta.end_ns = 0xfffffffffffffff0;  // beyond 2^53: must survive JSON exactly
    meta.dropped_per_cpu = {0, 12, 0, 3};
    meta.peak_backlog_bytes = 6'291'456;
    meta.records = 123'456;
    meta.symbols = {
        {0xffffffff81a00010, Symbol{"__alloc_skb", 0x10, ""}},
        {0xffffffffc0a01020, Symbol{"foo_init", 0x20, "foo"}},
        {0xffffffff81ccc000, Symbol{}},  // unknown sites are stored too
    };
    return meta;
}

void expect_same_meta(const RecordingMeta& a, const RecordingMeta& b) {
    EXPECT_EQ(a.format_version, b.format_version);
    EXPECT_EQ(a.abi_version, b.abi_version);
    EXPECT_EQ(a.kleakd_version, b.kleakd_version);
    EXPECT_EQ(a.kernel_release, b.kernel_release);
    EXPECT_EQ(a.boot_id, b.boot_id);
    EXPECT_EQ(a.hostname, b.hostname);
    EXPECT_EQ(a.cpus, b.cpus);
    EXPECT_EQ(a.buffer_size, b.buffer_size);
    EXPECT_EQ(a.start_ns, b.start_ns);
    EXPECT_EQ(a.end_ns, b.end_ns);
    EXPECT_EQ(a.dropped_per_cpu, b.dropped_per_cpu);
    EXPECT_EQ(a.peak_backlog_bytes, b.peak_backlog_bytes);
    EXPECT_EQ(a.records, b.records);
    ASSERT_EQ(a.symbols.size(), b.symbols.size());
    for (const auto& [address, symbol] : a.symbols) {
        ASSERT_TRUE(b.symbols.contains(address)) << std::hex << address;
        const Symbol& other = b.symbols.at(address);
        EXPECT_EQ(std::tie(symbol.function, symbol.offset, symbol.module),
                  std::tie(other.function, other.offset, other.module));
    }
}

TEST(Meta, RoundTripThroughText) {
    const RecordingMeta meta = sample_meta();
    const std::string text = meta_to_json(meta).dump(2);
    expect_same_meta(meta_from_json(nlohmann::json::parse(text)), meta);
}

TEST(Meta, SymbolKeysAreHexAddresses) {
    const nlohmann::json json = meta_to_json(sample_meta());
    ASSERT_TRUE(json.at("symbols").contains("0xffffffffc0a01020"));
    EXPECT_EQ(json.at("symbols").at("0xffffffffc0a01020"),
              (nlohmann::json{{"function", "foo_init"}, {"offset", 0x20}, {"module", "foo"}}));
    EXPECT_EQ(json.at("format_version"), kRecordingFormatVersion);
}

TEST(Meta, MissingKeyErrorNamesTheKey) {
    const nlohmann::json full = meta_to_json(sample_meta());
    for (const auto& [key, value] : full.items()) {
        nlohmann::json json = full;
        json.erase(key);
        try {
            meta_from_json(json);
            ADD_FAILURE() << "no error without '" << key << "'";
        } catch (const std::runtime_error& e) {
            EXPECT_EQ(std::string(e.what()), "meta.json: missing key '" + key + "'");
        }
    }
}

TEST(Meta, MissingSymbolFieldNamesTheField) {
    nlohmann::json json = meta_to_json(sample_meta());
    json["symbols"]["0xffffffffc0a01020"].erase("module");
    try {
        meta_from_json(json);
        ADD_FAILURE() << "no error";
    } catch (const std::runtime_error& e) {
        EXPECT_EQ(std::string(e.what()), "meta.json: missing key 'module'");
    }
}

void expect_meta_error(const nlohmann::json& json, const std::string& message) {
    try {
        meta_from_json(json);
        ADD_FAILURE() << "no error, expected: " << message;
    } catch (const std::runtime_error& e) {
        EXPECT_EQ(std::string(e.what()), message);
    }
}

TEST(Meta, WrongTypeNamesTheKey) {
    nlohmann::json json = meta_to_json(sample_meta());
    json["cpus"] = "four";
    expect_meta_error(json, "meta.json: key 'cpus' has the wrong type");

    json = meta_to_json(sample_meta());
    json["dropped_per_cpu"] = 3;
    expect_meta_error(json, "meta.json: key 'dropped_per_cpu' has the wrong type");

    json = meta_to_json(sample_meta());
    json["symbols"] = nlohmann::json::array();
    expect_meta_error(json, "meta.json: key 'symbols' has the wrong type");
}

TEST(Meta, RejectsOtherFormatVersionsAndNonObjects) {
    nlohmann::json json = meta_to_json(sample_meta());
    json["format_version"] = 2;
    expect_meta_error(json, "meta.json: recording format version 2, this kleakd reads 1");
    expect_meta_error(nlohmann::json::array(), "meta.json: not a JSON object");
}

TEST(Meta, RejectsSymbolKeysThatAreNotHexAddresses) {
    for (const char* key : {"ffffffff81000000", "0x", "0xzz", "0x12zz", "0x-1", "0x 12", "0x1ffffffffffffffff"}) {
        nlohmann::json json = meta_to_json(sample_meta());
        json["symbols"][key] = {{"function", "f"}, {"offset", 0}, {"module", ""}};
        expect_meta_error(json, std::string("meta.json: symbol key '") + key + "' is not a hex address");
    }
}


TEST(Meta, NegativeAndFractionalNumbersAreWrongTypesNotConverted) {
    for (const auto& bad : {nlohmann::json(-1), nlohmann::json(2.7), nlohmann::json("4")}) {
        nlohmann::json json = meta_to_json(sample_meta());
        json["cpus"] = bad;
        expect_meta_error(json, "meta.json: key 'cpus' has the wrong type");
    }
    nlohmann::json json = meta_to_json(sample_meta());
    json["dropped_per_cpu"] = {0, -3};
    expect_meta_error(json, "meta.json: key 'dropped_per_cpu' has the wrong type");
}

// What a report allocates by or subtracts is checked, not trusted: a huge
// `cpus` was a bad_alloc, end before start an underflow.
TEST(Meta, RejectsCpuCountsAndTimesAReportCannotUse) {
    nlohmann::json json = meta_to_json(sample_meta());
    json["cpus"] = 0;
    expect_meta_error(json, "meta.json: cpus 0 is out of range (1 to 8192)");
    json["cpus"] = 4000000000u;
    expect_meta_error(json, "meta.json: cpus 4000000000 is out of range (1 to 8192)");

    // Not cut to 32 bits (it was read as 2 CPUs).
    json["cpus"] = (std::uint64_t{1} << 32) + 2;
    expect_meta_error(json, "meta.json: key 'cpus' has the wrong type");
    json["cpus"] = 2;
    json["abi_version"] = (std::uint64_t{1} << 32) + 1;
    expect_meta_error(json, "meta.json: key 'abi_version' has the wrong type");

    json = meta_to_json(sample_meta());
    json["cpus"] = 1;
    json["dropped_per_cpu"] = {0, 0, 0};
    expect_meta_error(json, "meta.json: dropped_per_cpu has 3 entries for 1 CPUs");

    json = meta_to_json(sample_meta());
    json["start_ns"] = 20;
    json["end_ns"] = 10;
    expect_meta_error(json, "meta.json: end_ns 10 is before start_ns 20");
}

}  // namespace
}  // namespace kleak::core
