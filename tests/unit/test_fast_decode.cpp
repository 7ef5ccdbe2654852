// decode_record_fast (core/fast_decode.h) must be decode_record with the
// allocation and free cases inlined: same status, same fields, for every
// kind, every length, and bytes that are not a record at all.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "core/event.h"
#include "core/fast_decode.h"
#include "test_helpers.h"

namespace kleak::core {
namespace {

using test::alloc_event;
using test::encode_event;
using test::event_fields;
using test::free_event;
using test::stale_event;

void expect_same_decode(std::span<const std::byte> bytes, std::uint16_t cpu, const char* what) {
    Event reference = stale_event();
    Event fast = stale_event();
    const DecodeStatus reference_status = decode_record(bytes, cpu, reference);
    const DecodeStatus fast_status = decode_record_fast(bytes, cpu, fast);
    ASSERT_EQ(fast_status, reference_status) << what << ", " << bytes.size() << " bytes";
    EXPECT_EQ(event_fields(fast), event_fields(reference)) << what << ", " << bytes.size() << " bytes";
}

std::vector<std::vector<std::byte>> sample_records() {
    return {
        encode_event(alloc_event({.ts = 123456789012, .ptr = 0xffff888012345678, .site = 0xffffffff81234567,
                                  .req = 100, .alloc = 128, .kind = EventKind::kmalloc, .gfp = 0xcc0, .tgid = 4242,
                                  .tid = 4243})),
        encode_event(alloc_event({.ts = 5, .ptr = 1, .site = 2, .req = 192, .alloc = 192,
                                  .kind = EventKind::cache_alloc, .gfp = 0x400, .tgid = 1, .tid = 2})),
        encode_event(free_event({.ts = 99, .ptr = 0xffff888012345678, .site = 7, .kind = EventKind::kfree, .tgid = 77})),
        encode_event(free_event({.ts = ~0ull, .ptr = ~0ull, .site = ~0ull, .kind = EventKind::cache_free, .tgid = ~0u})),
        test::printk_record({.ts = 10, .text = "<4>hello\n", .flags = KLEAK_PRINTK_TRUNCATED, .tgid = 3, .tid = 4}),
        // ABI 2: a free that read no clock, and the mark closing its batch.
        encode_event(free_event({.ts = 77, .ptr = 0xffff888012345678, .site = 9, .kind = EventKind::kfree,
                                 .flags = KLEAK_TS_LOWER_BOUND})),
        test::time_mark_record(0x0102030405060708),
    };
}

TEST(FastDecode, SameAsDecodeRecordForEveryKindAndEveryTruncation) {
    for (const auto& record : sample_records()) {
        for (std::size_t len = 0; len <= record.size(); ++len)
            expect_same_decode(std::span(record).first(len), 3, "truncated record");
    }
}

TEST(FastDecode, SameAsDecodeRecordForLongerFramesAndEveryKindNumber) {
    // A free record in a frame long enough to be read as an allocation, and
    // every kind number (known or not) in a full-size record.
    for (const auto& record : sample_records()) {
        std::vector<std::byte> longer = record;
        longer.resize(record.size() + 40, std::byte{0x5a});
        expect_same_decode(longer, 1, "padded record");
    }
    std::vector<std::byte> bytes = sample_records()[0];
    for (std::uint16_t kind = 0; kind < 300; ++kind) {
        std::memcpy(bytes.data() + offsetof(kleak_record_header, kind), &kind, sizeof kind);
        expect_same_decode(bytes, 0, "kind number");
    }
}

TEST(FastDecode, FreeClearsAllocationOnlyFieldsLikeTheReference) {
    const auto record = sample_records()[2];
    Event got = stale_event();
    ASSERT_EQ(decode_record_fast(record, 2, got), DecodeStatus::ok);
    EXPECT_EQ(got.bytes_req, 0u);
    EXPECT_EQ(got.bytes_alloc, 0u);
    EXPECT_EQ(got.gfp_flags, 0u);
    EXPECT_EQ(got.tid, 0u);
    EXPECT_EQ(got.cpu, 2u);
}

TEST(FastDecode, FlaggedFreeKeepsItsFlagsLikeTheReference) {
    const auto record = sample_records()[5];
    Event got = stale_event();
    ASSERT_EQ(decode_record_fast(record, 1, got), DecodeStatus::ok);
    EXPECT_EQ(got.kind, EventKind::kfree);
    EXPECT_EQ(got.gfp_flags, std::uint32_t{KLEAK_TS_LOWER_BOUND});
    EXPECT_EQ(got.bytes_req, 0u);
}

TEST(FastDecode, TimeMarkDecodesThroughTheReference) {
    // A mark is shorter than a free record: the fast path must hand it on.
    const auto record = sample_records()[6];
    ASSERT_EQ(record.size(), std::size_t{KLEAK_TIME_MARK_BYTES});
    Event got = stale_event();
    ASSERT_EQ(decode_record_fast(record, 5, got), DecodeStatus::ok);
    EXPECT_EQ(got.kind, EventKind::time_mark);
    EXPECT_EQ(got.ts_ns, 0x0102030405060708u);
    EXPECT_EQ(got.cpu, 5u);
    EXPECT_EQ(decode_record_fast(std::span(record).first(KLEAK_TIME_MARK_BYTES - 1), 5, got), DecodeStatus::too_short);
}

}  // namespace
}  // namespace kleak::core
