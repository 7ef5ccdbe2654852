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
                                  .stack = 4243})),
        encode_event(alloc_event({.ts = 5, .ptr = 1, .site = 2, .req = 192, .alloc = 192,
                                  .kind = EventKind::cache_alloc, .gfp = 0x400, .tgid = 1, .stack = 2})),
        encode_event(free_event({.ts = 99, .ptr = 0xffff888012345678, .site = 7, .kind = EventKind::kfree, .tgid = 77})),
        encode_event(free_event({.ts = ~0ull, .ptr = ~0ull, .site = ~0ull, .kind = EventKind::cache_free, .tgid = ~0u})),
        test::printk_record({.ts = 10, .text = "<4>hello\n", .flags = KLEAK_PRINTK_TRUNCATED, .tgid = 3, .tid = 4}),
        // ABI 2: a free that read no clock, and the mark closing its batch.
        encode_event(free_event({.ts = 77, .ptr = 0xffff888012345678, .site = 9, .kind = EventKind::kfree,
                                 .flags = KLEAK_TS_LOWER_BOUND})),
        test::time_mark_record(0x0102030405060708),
        // ABI 3: a kmem_cache_alloc that names its cache (56 bytes).
        encode_event(alloc_event({.ts = 31, .ptr = 0xffff888012345678, .site = 0xffffffff81234567, .req = 232,
                                  .alloc = 256, .kind = EventKind::cache_alloc, .gfp = 0x400cc0, .tgid = 5,
                                  .stack = 6, .cache = 0xffff888100001000})),
        // A kmem_cache_free that names its cache (40 bytes), stamped and not.
        encode_event(free_event({.ts = 32, .ptr = 0xffff888012345678, .site = 0xffffffff81234568,
                                 .kind = EventKind::cache_free, .tgid = 0, .cache = 0xffff888100001000})),
        encode_event(free_event({.ts = 33, .ptr = 0xffff888012345679, .site = 0xffffffff81234569,
                                 .kind = EventKind::cache_free, .flags = KLEAK_TS_LOWER_BOUND,
                                 .cache = 0xffff888100002000})),
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
    // The same in a 56-byte record, long enough for every fixed-size kind.
    std::vector<std::byte> longest = sample_records()[7];
    for (std::uint16_t kind = 0; kind < 300; ++kind) {
        std::memcpy(longest.data() + offsetof(kleak_record_header, kind), &kind, sizeof kind);
        expect_same_decode(longest, 0, "kind number, 56 bytes");
    }
}

TEST(FastDecode, CacheAllocFromCarriesItsCacheLikeTheReference) {
    const auto record = sample_records()[7];
    ASSERT_EQ(record.size(), sizeof(kleak_cache_alloc_record));
    Event got = stale_event();
    ASSERT_EQ(decode_record_fast(record, 4, got), DecodeStatus::ok);
    EXPECT_EQ(got.kind, EventKind::cache_alloc);
    EXPECT_EQ(got.cache, 0xffff888100001000u);
    EXPECT_EQ(got.bytes_req, 232u);
    EXPECT_EQ(got.bytes_alloc, 256u);
    EXPECT_EQ(got.gfp_flags, 0x400cc0u);
    EXPECT_EQ(got.stack, 6u);
    EXPECT_EQ(got.cpu, 4u);
    // One byte short of its cache: too short, as an ABI 2 allocation's length is too.
    EXPECT_EQ(decode_record_fast(std::span(record).first(record.size() - 1), 4, got), DecodeStatus::too_short);
    EXPECT_EQ(decode_record_fast(std::span(record).first(sizeof(kleak_alloc_record)), 4, got),
              DecodeStatus::too_short);
}

TEST(FastDecode, AllocationsWithoutACacheClearAStaleOne) {
    // The fast path reuses Events: a kmalloc or ABI 2 cache_alloc after a
    // KLEAK_CACHE_ALLOC_FROM must not keep its cache.
    for (const std::size_t i : {std::size_t{0}, std::size_t{1}, std::size_t{2}, std::size_t{3}}) {
        Event got = stale_event();
        ASSERT_EQ(decode_record_fast(sample_records()[7], 0, got), DecodeStatus::ok);
        ASSERT_NE(got.cache, 0u);
        ASSERT_EQ(decode_record_fast(sample_records()[i], 0, got), DecodeStatus::ok);
        EXPECT_EQ(got.cache, 0u) << "record " << i;
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
