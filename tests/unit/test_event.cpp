// decode_record: the only reader of the wire layout in bpf/kleak_abi.h.
#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <limits>

#include "core/event.h"
#include "test_helpers.h"

namespace kleak::core {
namespace {

using test::alloc_event;
using test::encode_event;
using test::event_fields;
using test::free_event;

constexpr std::uint64_t kPtr = 0xffff888012345678;
constexpr std::uint64_t kSite = 0xffffffff81234567;

using test::stale_event;

TEST(DecodeRecord, KmallocAllFields) {
    const Event sent = alloc_event({.ts = 123456789012, .ptr = kPtr, .site = kSite, .req = 100, .alloc = 128,
                                    .kind = EventKind::kmalloc, .gfp = 0xcc0, .tgid = 4242, .stack = 4243});
    Event got = stale_event();
    ASSERT_EQ(decode_record(encode_event(sent), 3, got), DecodeStatus::ok);

    Event expected = sent;
    expected.cpu = 3;  // the ring, not the record, says which CPU
    EXPECT_EQ(event_fields(got), event_fields(expected));
}

TEST(DecodeRecord, CacheAllocAllFields) {
    const Event sent = alloc_event({.ts = 5, .ptr = kPtr, .site = kSite, .req = 192, .alloc = 192,
                                    .kind = EventKind::cache_alloc, .gfp = 0x400, .tgid = 1, .stack = 2});
    Event got = stale_event();
    ASSERT_EQ(decode_record(encode_event(sent), 0, got), DecodeStatus::ok);

    Event expected = sent;
    expected.cpu = 0;
    EXPECT_EQ(event_fields(got), event_fields(expected));
}

// ABI 3: kmem_cache_alloc on 6.1+ names its cache: 56 bytes, an allocation
// record and the `struct kmem_cache *`, decoded as a cache_alloc.
constexpr std::uint64_t kCache = 0xffff888100001000;

TEST(DecodeRecord, CacheAllocFromAllFieldsAndItsCache) {
    const Event sent = alloc_event({.ts = 77, .ptr = kPtr, .site = kSite, .req = 232, .alloc = 256,
                                    .kind = EventKind::cache_alloc, .gfp = 0x400cc0, .tgid = 9, .stack = 10,
                                    .cache = kCache});
    const std::vector<std::byte> bytes = encode_event(sent);
    ASSERT_EQ(bytes.size(), 56u);
    ASSERT_EQ(sizeof(kleak_cache_alloc_record), 56u);
    kleak_record_header hdr;
    std::memcpy(&hdr, bytes.data(), sizeof hdr);
    ASSERT_EQ(hdr.kind, KLEAK_CACHE_ALLOC_FROM);
    ASSERT_EQ(KLEAK_CACHE_ALLOC_FROM, 7);
    // The cache is the last 8 bytes.
    std::uint64_t tail = 0;
    std::memcpy(&tail, bytes.data() + 48, sizeof tail);
    EXPECT_EQ(tail, kCache);

    Event got = stale_event();
    ASSERT_EQ(decode_record(bytes, 6, got), DecodeStatus::ok);
    Event expected = sent;
    expected.cpu = 6;
    EXPECT_EQ(event_fields(got), event_fields(expected));
    EXPECT_EQ(got.kind, EventKind::cache_alloc);
    EXPECT_EQ(got.cache, kCache);
}

TEST(DecodeRecord, CacheFreeFromAllFieldsAndItsCache) {
    const Event sent = free_event({.ts = 78, .ptr = kPtr, .site = kSite, .kind = EventKind::cache_free,
                                   .flags = KLEAK_TS_LOWER_BOUND, .cache = kCache});
    const std::vector<std::byte> bytes = encode_event(sent);
    ASSERT_EQ(bytes.size(), 40u);
    kleak_record_header hdr;
    std::memcpy(&hdr, bytes.data(), sizeof hdr);
    ASSERT_EQ(hdr.kind, KLEAK_CACHE_FREE_FROM);
    ASSERT_EQ(KLEAK_CACHE_FREE_FROM, 14);
    std::uint64_t tail = 0;
    std::memcpy(&tail, bytes.data() + 32, sizeof tail);
    EXPECT_EQ(tail, kCache);

    Event got = stale_event();
    ASSERT_EQ(decode_record(bytes, 6, got), DecodeStatus::ok);
    Event expected = sent;
    expected.cpu = 6;
    EXPECT_EQ(event_fields(got), event_fields(expected));
    EXPECT_EQ(got.kind, EventKind::cache_free);
    EXPECT_EQ(got.cache, kCache);
    EXPECT_EQ(got.gfp_flags, KLEAK_TS_LOWER_BOUND);
    // One byte short: too short, not a plain 32-byte free.
    EXPECT_EQ(decode_record(std::span(bytes).first(39), 6, got), DecodeStatus::too_short);
}

TEST(DecodeRecord, EveryOtherKindLeavesNoCacheBehind) {
    // A decode into a reused Event: only KLEAK_CACHE_ALLOC_FROM and _FREE_FROM set `cache`.
    const std::vector<std::vector<std::byte>> records = {
        encode_event(alloc_event({.ts = 1, .ptr = kPtr, .site = kSite, .req = 8, .alloc = 8})),
        encode_event(alloc_event({.ts = 2, .ptr = kPtr, .site = kSite, .req = 8, .alloc = 8,
                                  .kind = EventKind::cache_alloc})),
        encode_event(free_event({.ts = 3, .ptr = kPtr, .site = kSite})),
        encode_event(free_event({.ts = 4, .ptr = kPtr, .site = kSite, .kind = EventKind::cache_free})),
        test::time_mark_record(5),
        test::printk_record({.ts = 6, .text = "x"}),
    };
    for (const auto& record : records) {
        Event got = stale_event();
        ASSERT_EQ(decode_record(record, 0, got), DecodeStatus::ok);
        EXPECT_EQ(got.cache, 0u) << "kind " << static_cast<int>(got.kind);
    }
}

TEST(DecodeRecord, TooShortCacheAllocFrom) {
    const std::vector<std::byte> full = encode_event(alloc_event(
        {.ts = 1, .ptr = kPtr, .site = kSite, .req = 8, .alloc = 8, .kind = EventKind::cache_alloc, .cache = kCache}));
    ASSERT_EQ(full.size(), 56u);
    Event got;
    // Every cut short of 56 bytes, an ABI 2 allocation's 48 among them.
    for (std::size_t len = 0; len < full.size(); ++len)
        EXPECT_EQ(decode_record(std::span(full).first(len), 0, got), DecodeStatus::too_short) << len << " bytes";
    EXPECT_EQ(decode_record(full, 0, got), DecodeStatus::ok);
}

TEST(DecodeRecord, CacheAllocFromUnaligned) {
    const Event sent = alloc_event({.ts = 0x0102030405060708, .ptr = kPtr, .site = kSite, .req = 33, .alloc = 64,
                                    .kind = EventKind::cache_alloc, .gfp = 0x10, .tgid = 3, .stack = 4,
                                    .cache = 0xffff888123456789});
    const std::vector<std::byte> bytes = encode_event(sent);
    for (std::size_t offset : {1u, 3u, 5u, 7u}) {
        alignas(16) std::array<std::byte, 128> storage{};
        std::memcpy(storage.data() + offset, bytes.data(), bytes.size());
        Event got = stale_event();
        ASSERT_EQ(decode_record(std::span(storage).subspan(offset, bytes.size()), 1, got), DecodeStatus::ok);
        Event expected = sent;
        expected.cpu = 1;
        EXPECT_EQ(event_fields(got), event_fields(expected)) << "offset " << offset;
    }
}

TEST(DecodeRecord, KfreeClearsAllocationOnlyFields) {
    const Event sent = free_event({.ts = 99, .ptr = kPtr, .site = kSite, .kind = EventKind::kfree, .tgid = 77});
    Event got = stale_event();
    ASSERT_EQ(decode_record(encode_event(sent), 1, got), DecodeStatus::ok);

    Event expected = sent;
    expected.cpu = 1;
    EXPECT_EQ(event_fields(got), event_fields(expected));
    EXPECT_EQ(got.bytes_req, 0u);
    EXPECT_EQ(got.bytes_alloc, 0u);
    EXPECT_EQ(got.gfp_flags, 0u);
    EXPECT_EQ(got.tid, 0u);
}

TEST(DecodeRecord, CacheFreeAllFields) {
    const Event sent = free_event({.ts = 1000, .ptr = kPtr + 64, .site = kSite + 8, .kind = EventKind::cache_free});
    Event got = stale_event();
    ASSERT_EQ(decode_record(encode_event(sent), 65535, got), DecodeStatus::ok);

    Event expected = sent;
    expected.cpu = 65535;
    EXPECT_EQ(event_fields(got), event_fields(expected));
}

TEST(DecodeRecord, FreeCarriesTheRecordFlags) {
    // A free that read no clock of its own says so in its header; the flag
    // must reach StampWindows, in gfp_flags. Its window is still unknown: 0.
    const Event sent =
        free_event({.ts = 500, .ptr = kPtr, .site = kSite, .kind = EventKind::cache_free, .flags = KLEAK_TS_LOWER_BOUND});
    Event got = stale_event();
    ASSERT_EQ(decode_record(encode_event(sent), 4, got), DecodeStatus::ok);
    Event expected = sent;
    expected.cpu = 4;
    EXPECT_EQ(event_fields(got), event_fields(expected));
    EXPECT_EQ(got.gfp_flags, std::uint32_t{KLEAK_TS_LOWER_BOUND});
    EXPECT_EQ(got.bytes_req, 0u);
}

TEST(DecodeRecord, TimeMarkIsABareHeader) {
    Event got = stale_event();
    const std::vector<std::byte> mark = test::time_mark_record(0x0102030405060708);
    ASSERT_EQ(mark.size(), std::size_t{KLEAK_TIME_MARK_BYTES});
    ASSERT_EQ(decode_record(mark, 7, got), DecodeStatus::ok);
    Event expected;
    expected.ts_ns = 0x0102030405060708;
    expected.kind = EventKind::time_mark;
    expected.cpu = 7;
    // Nothing of the stale event is left behind.
    EXPECT_EQ(event_fields(got), event_fields(expected));
}

TEST(DecodeRecord, TooShortTimeMark) {
    const std::vector<std::byte> mark = test::time_mark_record(1);
    Event got;
    EXPECT_EQ(decode_record(std::span(mark).first(KLEAK_TIME_MARK_BYTES - 1), 0, got), DecodeStatus::too_short);
    EXPECT_EQ(decode_record(std::span(mark).first(1), 0, got), DecodeStatus::too_short);
}

TEST(DecodeRecord, TooShortHeader) {
    const std::vector<std::byte> full = encode_event(free_event({.ts = 1, .ptr = kPtr, .site = kSite}));
    Event got;
    EXPECT_EQ(decode_record({}, 0, got), DecodeStatus::too_short);
    EXPECT_EQ(decode_record(std::span(full).first(1), 0, got), DecodeStatus::too_short);
    EXPECT_EQ(decode_record(std::span(full).first(sizeof(kleak_record_header) - 1), 0, got),
              DecodeStatus::too_short);
}

TEST(DecodeRecord, TooShortAllocBody) {
    for (EventKind kind : {EventKind::kmalloc, EventKind::cache_alloc}) {
        const std::vector<std::byte> full =
            encode_event(alloc_event({.ts = 1, .ptr = kPtr, .site = kSite, .req = 8, .alloc = 8, .kind = kind}));
        ASSERT_EQ(full.size(), sizeof(kleak_alloc_record));
        Event got;
        // A header alone, a free-sized record, and one byte short are all too short for an allocation.
        EXPECT_EQ(decode_record(std::span(full).first(sizeof(kleak_record_header)), 0, got), DecodeStatus::too_short);
        EXPECT_EQ(decode_record(std::span(full).first(sizeof(kleak_free_record)), 0, got), DecodeStatus::too_short);
        EXPECT_EQ(decode_record(std::span(full).first(full.size() - 1), 0, got), DecodeStatus::too_short);
        EXPECT_EQ(decode_record(full, 0, got), DecodeStatus::ok);
    }
}

TEST(DecodeRecord, TooShortFreeBody) {
    for (EventKind kind : {EventKind::kfree, EventKind::cache_free}) {
        const std::vector<std::byte> full = encode_event(free_event({.ts = 1, .ptr = kPtr, .site = kSite, .kind = kind}));
        ASSERT_EQ(full.size(), sizeof(kleak_free_record));
        Event got;
        EXPECT_EQ(decode_record(std::span(full).first(sizeof(kleak_record_header)), 0, got), DecodeStatus::too_short);
        EXPECT_EQ(decode_record(std::span(full).first(full.size() - 1), 0, got), DecodeStatus::too_short);
        EXPECT_EQ(decode_record(full, 0, got), DecodeStatus::ok);
    }
}

TEST(DecodeRecord, UnknownKind) {
    // 6 is KLEAK_TIME_MARK since ABI 2, 7 KLEAK_CACHE_ALLOC_FROM since ABI 3,
    // 8-13 the page, percpu and vmalloc kinds since ABI 4, 14
    // KLEAK_CACHE_FREE_FROM; 0x7f is no kind.
    for (std::uint16_t kind : {0, 0x7f, 0x100, 0xffff}) {
        kleak_alloc_record rec = test::alloc_record(alloc_event({.ts = 1, .ptr = kPtr, .site = kSite}));
        rec.hdr.kind = kind;
        Event got;
        EXPECT_EQ(decode_record(test::record_bytes(rec), 0, got), DecodeStatus::unknown_kind) << "kind " << kind;
    }
}

TEST(DecodeRecord, UnknownKindInABareHeader) {
    // A header of an unknown kind is reported as unknown, not too short: the
    // kind says nothing about how long the record should be.
    kleak_record_header hdr{};
    hdr.kind = 0x7f;
    Event got;
    EXPECT_EQ(decode_record(test::record_bytes(hdr), 0, got), DecodeStatus::unknown_kind);
}

TEST(DecodeRecord, TrailingBytesAreIgnored) {
    // Ring records are rounded up to 8 bytes; a longer span still decodes.
    const Event sent = free_event({.ts = 7, .ptr = kPtr, .site = kSite});
    std::vector<std::byte> padded = encode_event(sent);
    padded.resize(padded.size() + 8, std::byte{0xab});
    Event got;
    ASSERT_EQ(decode_record(padded, 2, got), DecodeStatus::ok);
    Event expected = sent;
    expected.cpu = 2;
    EXPECT_EQ(event_fields(got), event_fields(expected));
}

TEST(DecodeRecord, UnalignedInputBuffer) {
    // Ring and recording frames give no alignment guarantee: decode from odd
    // offsets of a byte array (run under UBSan to catch misaligned loads).
    const Event alloc = alloc_event({.ts = 0x0102030405060708, .ptr = kPtr, .site = kSite, .req = 33, .alloc = 64,
                                     .kind = EventKind::kmalloc, .gfp = 0x10, .tgid = 3, .stack = 4});
    const Event free = free_event({.ts = 0x1112131415161718, .ptr = kPtr, .site = kSite + 1,
                                   .kind = EventKind::cache_free, .tgid = 5});
    for (std::size_t offset : {1u, 3u, 5u, 7u}) {
        alignas(16) std::array<std::byte, 128> storage{};
        const std::vector<std::byte> alloc_bytes = encode_event(alloc);
        const std::vector<std::byte> free_bytes = encode_event(free);
        std::memcpy(storage.data() + offset, alloc_bytes.data(), alloc_bytes.size());
        std::memcpy(storage.data() + offset + alloc_bytes.size(), free_bytes.data(), free_bytes.size());

        Event got;
        ASSERT_EQ(decode_record(std::span(storage).subspan(offset, alloc_bytes.size()), 1, got), DecodeStatus::ok);
        Event expected = alloc;
        expected.cpu = 1;
        EXPECT_EQ(event_fields(got), event_fields(expected)) << "offset " << offset;

        ASSERT_EQ(decode_record(std::span(storage).subspan(offset + alloc_bytes.size(), free_bytes.size()), 1, got),
                  DecodeStatus::ok);
        expected = free;
        expected.cpu = 1;
        EXPECT_EQ(event_fields(got), event_fields(expected)) << "offset " << offset;
    }
}

TEST(EventKind, IsAlloc) {
    EXPECT_TRUE(is_alloc(EventKind::kmalloc));
    EXPECT_TRUE(is_alloc(EventKind::cache_alloc));
    EXPECT_FALSE(is_alloc(EventKind::kfree));
    EXPECT_FALSE(is_alloc(EventKind::cache_free));
    EXPECT_FALSE(is_alloc(EventKind::printk));
    EXPECT_FALSE(is_alloc(EventKind::time_mark));
}

TEST(EventKind, IsFree) {
    EXPECT_TRUE(is_free(EventKind::kfree));
    EXPECT_TRUE(is_free(EventKind::cache_free));
    EXPECT_FALSE(is_free(EventKind::kmalloc));
    EXPECT_FALSE(is_free(EventKind::cache_alloc));
    EXPECT_FALSE(is_free(EventKind::printk));
    EXPECT_FALSE(is_free(EventKind::time_mark));
}

TEST(EventKind, EarliestFreeIsTheStampMinusItsWindow) {
    EXPECT_EQ(earliest_free_ns(free_event({.ts = 400, .ptr = kPtr, .window = 310})), 90u);
    // A free that read the clock (window 0) happened at its stamp.
    EXPECT_EQ(earliest_free_ns(free_event({.ts = 400, .ptr = kPtr})), 400u);
}

TEST(EventKind, AnUnboundedWindowReachesBackToTimeZero) {
    // Whatever the stamp, below the window or far above it: no wrap-around.
    EXPECT_EQ(earliest_free_ns(free_event({.ts = 400, .ptr = kPtr, .window = kUnboundedWindow})), 0u);
    EXPECT_EQ(earliest_free_ns(free_event({.ts = std::uint64_t{5} << 40, .ptr = kPtr, .window = kUnboundedWindow})), 0u);
    // One ns less is still an exact window.
    EXPECT_EQ(earliest_free_ns(free_event({.ts = std::uint64_t{5} << 40, .ptr = kPtr, .window = kUnboundedWindow - 1})),
              (std::uint64_t{5} << 40) - (kUnboundedWindow - 1));
    static_assert(kUnboundedWindow == std::numeric_limits<std::uint32_t>::max());
}

}  // namespace
}  // namespace kleak::core
