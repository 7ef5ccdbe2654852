// record_batch: splitting one ring sample into the records it holds, whole
// or wrapped around the ring's end.
#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <string>
#include <vector>

#include "core/event.h"
#include "core/record_batch.h"
#include "test_helpers.h"

namespace kleak::core {
namespace {

using test::alloc_event;
using test::encode_event;
using test::free_event;
using test::printk_record;
using Bytes = std::vector<std::byte>;

constexpr std::uint64_t kPtr = 0xffff888012345678;
constexpr std::uint64_t kSite = 0xffffffff81234567;

Bytes kmalloc_bytes(std::uint64_t ts) {
    return encode_event(alloc_event({.ts = ts, .ptr = kPtr + ts, .site = kSite, .req = 8, .alloc = 8}));
}
Bytes cache_alloc_bytes(std::uint64_t ts) {
    return encode_event(
        alloc_event({.ts = ts, .ptr = kPtr + ts, .site = kSite, .req = 64, .alloc = 64, .kind = EventKind::cache_alloc}));
}
// ABI 3: a kmem_cache_alloc naming its cache, 56 bytes.
Bytes cache_alloc_from_bytes(std::uint64_t ts) {
    return encode_event(alloc_event({.ts = ts, .ptr = kPtr + ts, .site = kSite, .req = 232, .alloc = 256,
                                     .kind = EventKind::cache_alloc, .cache = 0xffff888100001000}));
}
Bytes kfree_bytes(std::uint64_t ts) { return encode_event(free_event({.ts = ts, .ptr = kPtr + ts, .site = kSite})); }
Bytes cache_free_bytes(std::uint64_t ts) {
    return encode_event(free_event({.ts = ts, .ptr = kPtr + ts, .site = kSite, .kind = EventKind::cache_free}));
}
Bytes cache_free_from_bytes(std::uint64_t ts) {
    return encode_event(free_event({.ts = ts, .ptr = kPtr + ts, .site = kSite, .kind = EventKind::cache_free,
                                    .cache = 0xffff888100001000}));
}

// A printk record as the BPF batch writes it: padded to 8 bytes.
Bytes padded(Bytes record) {
    record.resize((record.size() + 7) & ~std::size_t{7});
    return record;
}

Bytes concat(std::initializer_list<Bytes> parts) {
    Bytes out;
    for (const Bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
}

// The records for_each_record hands on, copied out.
std::vector<Bytes> split(std::span<const std::byte> sample) {
    std::vector<Bytes> out;
    const std::size_t n = for_each_record(sample, [&](std::span<const std::byte> r) { out.emplace_back(r.begin(), r.end()); });
    EXPECT_EQ(n, out.size());
    return out;
}

// Every record decodes; returns their timestamps in order.
std::vector<std::uint64_t> decoded_ts(const std::vector<Bytes>& records) {
    std::vector<std::uint64_t> ts;
    for (const Bytes& r : records) {
        Event e;
        EXPECT_EQ(decode_record(r, 0, e), DecodeStatus::ok) << "record of " << r.size() << " bytes";
        ts.push_back(e.ts_ns);
    }
    return ts;
}

// --- one record per sample: what BPF writes today -------------------------

TEST(RecordBatch, EachKindAloneIsOneWholeRecord) {
    for (const Bytes& sample : {kmalloc_bytes(1), cache_alloc_bytes(2), cache_alloc_from_bytes(8), kfree_bytes(3),
                                cache_free_bytes(4), printk_record({.ts = 5, .text = "hello"}),
                                printk_record({.ts = 6, .text = "12345678"}), printk_record({.ts = 7, .text = ""})}) {
        const auto records = split(sample);
        ASSERT_EQ(records.size(), 1u);
        EXPECT_EQ(records[0], sample);
    }
}

TEST(RecordBatch, SizesFollowTheKind) {
    EXPECT_EQ(next_record_size(kmalloc_bytes(1)), 48u);
    EXPECT_EQ(next_record_size(cache_alloc_bytes(1)), 48u);
    EXPECT_EQ(next_record_size(cache_alloc_from_bytes(1)), 56u);
    EXPECT_EQ(next_record_size(kfree_bytes(1)), 32u);
    EXPECT_EQ(next_record_size(cache_free_bytes(1)), 32u);
    EXPECT_EQ(next_record_size(printk_record({.ts = 1, .text = "abc"})), 27u);  // lone: unpadded
    EXPECT_EQ(next_record_size(test::time_mark_record(1)), 16u);
}

TEST(RecordBatch, LonePrintkOfMaximumLength) {
    const Bytes sample = printk_record({.ts = 1, .text = std::string(KLEAK_PRINTK_MAX, 'x')});
    ASSERT_EQ(sample.size(), kMaxRecordBytes);
    EXPECT_EQ(split(sample), std::vector<Bytes>{sample});
}

TEST(RecordBatch, EmptySampleHoldsNoRecord) {
    EXPECT_TRUE(split({}).empty());
    EXPECT_EQ(next_record_size({}), 0u);
}

// --- batches -----------------------------------------------------------------

TEST(RecordBatch, MixedBatchSplitsInOrder) {
    const Bytes batch = concat({kmalloc_bytes(1), kfree_bytes(2), cache_alloc_bytes(3), cache_free_bytes(4),
                                padded(printk_record({.ts = 5, .text = "odd"})), kmalloc_bytes(6)});
    const auto records = split(batch);
    ASSERT_EQ(records.size(), 6u);
    EXPECT_EQ(decoded_ts(records), (std::vector<std::uint64_t>{1, 2, 3, 4, 5, 6}));
    EXPECT_EQ(records[4].size(), 32u);  // 24 + 3, padded to 8
}

TEST(RecordBatch, CacheAllocFromIsSizedFiftySixWhenAllOfItIsThere) {
    const Bytes record = cache_alloc_from_bytes(1);
    ASSERT_EQ(record.size(), 56u);
    EXPECT_EQ(record_size_at(record, 56), 56u);
    EXPECT_EQ(record_size_at(record, 200), 56u);  // more of the sample follows
    // Fewer bytes left than it needs, an ABI 2 allocation's 48 among them: unsizable.
    EXPECT_EQ(record_size_at(record, 55), 0u);
    EXPECT_EQ(record_size_at(record, 48), 0u);
    // The header alone tells the size.
    EXPECT_EQ(record_size_at(std::span(record).first(kRecordSizeProbeBytes), 56), 56u);
}

TEST(RecordBatch, CacheFreeFromIsSizedFortyAndSplitsAmongOthers) {
    const Bytes record = cache_free_from_bytes(1);
    ASSERT_EQ(record.size(), 40u);
    EXPECT_EQ(record_size_at(record, 40), 40u);
    EXPECT_EQ(record_size_at(record, 39), 0u);
    EXPECT_EQ(record_size_at(record, 32), 0u);  // a plain free's 32 bytes are not enough
    const auto records = split(concat({cache_free_from_bytes(2), kfree_bytes(3), cache_free_from_bytes(4),
                                       cache_alloc_from_bytes(5), test::time_mark_record(6)}));
    ASSERT_EQ(records.size(), 5u);
    EXPECT_EQ(decoded_ts(records), (std::vector<std::uint64_t>{2, 3, 4, 5, 6}));
    Event e;
    ASSERT_EQ(decode_record(records[2], 0, e), DecodeStatus::ok);
    EXPECT_EQ(e.kind, EventKind::cache_free);
    EXPECT_EQ(e.cache, 0xffff888100001000u);
}

TEST(RecordBatch, BatchWithCacheAllocFromRecordsSplitsInOrder) {
    // What an ABI 3 batch holds on 6.1+: 48-, 56- and 32-byte records mixed.
    const Bytes batch = concat({kmalloc_bytes(1), cache_alloc_from_bytes(2), kfree_bytes(3), cache_alloc_from_bytes(4),
                                cache_free_bytes(5), padded(printk_record({.ts = 6, .text = "odd"})),
                                cache_alloc_from_bytes(7), test::time_mark_record(8)});
    const auto records = split(batch);
    ASSERT_EQ(records.size(), 8u);
    EXPECT_EQ(decoded_ts(records), (std::vector<std::uint64_t>{1, 2, 3, 4, 5, 6, 7, 8}));
    EXPECT_EQ(records[1], cache_alloc_from_bytes(2));
    EXPECT_EQ(records[6], cache_alloc_from_bytes(7));
    Event e;
    ASSERT_EQ(decode_record(records[3], 0, e), DecodeStatus::ok);
    EXPECT_EQ(e.kind, EventKind::cache_alloc);
    EXPECT_EQ(e.cache, 0xffff888100001000u);
    EXPECT_FALSE(is_time_mark(records[1]));
}

TEST(RecordBatch, TruncatedCacheAllocFromTailIsHandedOnUndecodable) {
    // Cut where an ABI 2 allocation would end: the rest is one undecodable record.
    const Bytes record = cache_alloc_from_bytes(2);
    const Bytes cut(record.begin(), record.begin() + 48);
    const auto records = split(concat({kfree_bytes(1), cut}));
    ASSERT_EQ(records.size(), 2u);
    EXPECT_EQ(records[1], cut);
    Event e;
    EXPECT_EQ(decode_record(records[1], 0, e), DecodeStatus::too_short);
}

// A free that read no clock: its header carries KLEAK_TS_LOWER_BOUND.
Bytes flagged_kfree_bytes(std::uint64_t lower_bound) {
    return encode_event(free_event({.ts = lower_bound, .ptr = kPtr + lower_bound, .site = kSite, .flags = KLEAK_TS_LOWER_BOUND}));
}

TEST(RecordBatch, BatchOfFlaggedFreesSplitsUpToItsClosingTimeMark) {
    // What ABI 2 writes: frees stamped with the previous reading, an
    // allocation (its own reading), more frees, and the mark closing the batch.
    const Bytes mark = test::time_mark_record(9);
    const Bytes batch = concat({kmalloc_bytes(1), flagged_kfree_bytes(1), flagged_kfree_bytes(1), cache_alloc_bytes(4),
                                flagged_kfree_bytes(4), mark});
    const auto records = split(batch);
    ASSERT_EQ(records.size(), 6u);
    EXPECT_EQ(decoded_ts(records), (std::vector<std::uint64_t>{1, 1, 1, 4, 4, 9}));
    EXPECT_EQ(records[5], mark);
    Event e;
    ASSERT_EQ(decode_record(records[5], 0, e), DecodeStatus::ok);
    EXPECT_EQ(e.kind, EventKind::time_mark);
}

TEST(RecordBatch, TruncatedTimeMarkIsHandedOnUndecodable) {
    const Bytes mark = test::time_mark_record(2);
    const Bytes cut(mark.begin(), mark.begin() + 12);
    EXPECT_EQ(next_record_size(cut), 0u);
    // A sample cut inside its header is not sized as the 16 bytes the kind needs.
    EXPECT_EQ(record_size_at(mark, 15), 0u);
    const auto records = split(concat({flagged_kfree_bytes(1), cut}));
    ASSERT_EQ(records.size(), 2u);
    EXPECT_EQ(records[1], cut);
    Event e;
    EXPECT_EQ(decode_record(records[1], 0, e), DecodeStatus::too_short);
}

TEST(RecordBatch, IsTimeMarkTellsAMarkFromEveryOtherRecord) {
    const Bytes mark = test::time_mark_record(9);
    EXPECT_TRUE(is_time_mark(mark));
    // Its kind is in the header: a mark with bytes after it is still one.
    Bytes longer = mark;
    longer.resize(mark.size() + 8);
    EXPECT_TRUE(is_time_mark(longer));
    // The header alone is enough, even where the record is cut short of its
    // 16 bytes (it is undecodable all the same).
    EXPECT_TRUE(is_time_mark(std::span(mark).first(sizeof(kleak_record_header))));
    EXPECT_FALSE(is_time_mark(std::span(mark).first(sizeof(kleak_record_header) - 1)));
    EXPECT_FALSE(is_time_mark(Bytes{}));

    EXPECT_FALSE(is_time_mark(kmalloc_bytes(9)));
    EXPECT_FALSE(is_time_mark(cache_alloc_bytes(9)));
    EXPECT_FALSE(is_time_mark(kfree_bytes(9)));
    EXPECT_FALSE(is_time_mark(cache_free_bytes(9)));
    EXPECT_FALSE(is_time_mark(flagged_kfree_bytes(9)));
    EXPECT_FALSE(is_time_mark(printk_record({.ts = 9, .text = "x"})));
    // A record of another kind whose other header fields look like a mark's.
    Bytes other = mark;
    kleak_record_header hdr;
    std::memcpy(&hdr, other.data(), sizeof hdr);
    hdr.kind = KLEAK_TIME_MARK + 1;
    std::memcpy(other.data(), &hdr, sizeof hdr);
    EXPECT_FALSE(is_time_mark(other));
}

TEST(RecordBatch, PrintkPaddingInsideABatchButNotAtItsEnd) {
    const Bytes inner = printk_record({.ts = 1, .text = "seven!!"});  // 31 bytes
    const Bytes last = printk_record({.ts = 2, .text = "x"});         // 25 bytes
    const auto records = split(concat({padded(inner), last}));
    ASSERT_EQ(records.size(), 2u);
    EXPECT_EQ(records[0].size(), 32u);
    EXPECT_EQ(records[1], last);
    EXPECT_EQ(decoded_ts(records), (std::vector<std::uint64_t>{1, 2}));
    // A padded last printk keeps its padding; the decoder ignores it.
    EXPECT_EQ(split(padded(last)), std::vector<Bytes>{padded(last)});
}

TEST(RecordBatch, PrintkWithoutPaddingBeforeTheNextRecordIsTakenAsPadded) {
    // The writer must pad: 5 bytes of the kfree are eaten as padding, and
    // what is left of it, read from the wrong offset, does not decode.
    const Bytes sample = concat({printk_record({.ts = 1, .text = "odd"}), kfree_bytes(2)});
    const auto records = split(sample);
    ASSERT_EQ(records.size(), 2u);
    EXPECT_EQ(records[0].size(), 32u);
    EXPECT_EQ(records[1].size(), 27u);
    Event e;
    EXPECT_NE(decode_record(records[1], 0, e), DecodeStatus::ok);
}

// --- what cannot be split ------------------------------------------------------

TEST(RecordBatch, TruncatedTailIsHandedOnAsOneUndecodableRecord) {
    const Bytes alloc = kmalloc_bytes(1);
    const Bytes cut(alloc.begin(), alloc.begin() + 40);
    const auto records = split(concat({kfree_bytes(1), cut}));
    ASSERT_EQ(records.size(), 2u);
    EXPECT_EQ(records[1], cut);
    Event e;
    EXPECT_EQ(decode_record(records[1], 0, e), DecodeStatus::too_short);
}

TEST(RecordBatch, TruncatedPrintkTextIsHandedOnWhole) {
    const Bytes printk = printk_record({.ts = 1, .text = "a longer message"});
    const Bytes cut(printk.begin(), printk.end() - 4);
    EXPECT_EQ(next_record_size(cut), 0u);
    EXPECT_EQ(split(cut), std::vector<Bytes>{cut});
}

TEST(RecordBatch, PrintkLengthPastTheMaximumCannotBeSized) {
    Bytes printk = printk_record({.ts = 1, .text = "abc"});
    const std::uint32_t len = KLEAK_PRINTK_MAX + 1;
    std::memcpy(printk.data() + offsetof(kleak_printk_record, len), &len, sizeof len);
    printk.resize(KLEAK_PRINTK_HEADER_SIZE + len);
    EXPECT_EQ(next_record_size(printk), 0u);
}

TEST(RecordBatch, UnknownKindTakesTheRestOfTheSample) {
    Bytes unknown = kfree_bytes(2);
    const std::uint16_t kind = 99;
    std::memcpy(unknown.data() + offsetof(kleak_record_header, kind), &kind, sizeof kind);
    const auto records = split(concat({kmalloc_bytes(1), unknown, kfree_bytes(3)}));
    ASSERT_EQ(records.size(), 2u);
    EXPECT_EQ(records[1].size(), unknown.size() + 32);
    Event e;
    EXPECT_EQ(decode_record(records[1], 0, e), DecodeStatus::unknown_kind);
}

TEST(RecordBatch, ShorterThanAHeader) {
    const Bytes tiny(7, std::byte{1});
    EXPECT_EQ(split(tiny), std::vector<Bytes>{tiny});
}

// --- a sample that wraps around the ring's end -------------------------------

// Splits `sample` as if the ring ended after `cut` bytes of it.
std::vector<Bytes> split_wrapped(const Bytes& sample, std::size_t cut, std::size_t* copied = nullptr) {
    std::array<std::byte, kMaxRecordBytes> bounce{};
    const std::span<const std::byte> all(sample);
    std::vector<Bytes> out;
    std::size_t from_bounce = 0;
    const std::size_t n =
        for_each_record(all.first(cut), all.subspan(cut), bounce, [&](std::span<const std::byte> r) {
            if (r.data() == bounce.data()) ++from_bounce;
            out.emplace_back(r.begin(), r.end());
        });
    EXPECT_EQ(n, out.size());
    if (copied) *copied = from_bounce;
    return out;
}

TEST(RecordBatchWrapped, EveryCutGivesTheSameRecordsAsContiguous) {
    const Bytes batch = concat({kmalloc_bytes(1), padded(printk_record({.ts = 2, .text = "wrap me around"})),
                                kfree_bytes(3), cache_alloc_bytes(4), cache_alloc_from_bytes(5),
                                printk_record({.ts = 6, .text = "end"})});
    const auto whole = split(batch);
    ASSERT_EQ(whole.size(), 6u);
    EXPECT_EQ(whole[4], cache_alloc_from_bytes(5));
    for (std::size_t cut = 0; cut <= batch.size(); ++cut) {
        std::size_t copied = 0;
        EXPECT_EQ(split_wrapped(batch, cut, &copied), whole) << "cut at " << cut;
        EXPECT_LE(copied, 1u) << "only the straddling record is copied, cut at " << cut;
    }
}

TEST(RecordBatchWrapped, TimeMarkSplitAcrossTheEnd) {
    // The closing mark is the last 16 bytes of a batch: every cut through it
    // (and through the flagged frees before it) gives the same records.
    const Bytes batch = concat({kmalloc_bytes(1), flagged_kfree_bytes(1), test::time_mark_record(3)});
    const auto whole = split(batch);
    ASSERT_EQ(whole.size(), 3u);
    for (std::size_t cut = 0; cut <= batch.size(); ++cut) {
        std::size_t copied = 0;
        EXPECT_EQ(split_wrapped(batch, cut, &copied), whole) << "cut at " << cut;
        EXPECT_LE(copied, 1u) << "only the straddling record is copied, cut at " << cut;
    }
}

TEST(RecordBatchWrapped, RecordsOnEitherSideAreNotCopied) {
    const Bytes batch = concat({kmalloc_bytes(1), kfree_bytes(2)});
    std::size_t copied = 1;
    EXPECT_EQ(split_wrapped(batch, 48, &copied).size(), 2u);
    EXPECT_EQ(copied, 0u);
}

TEST(RecordBatchWrapped, LongestPrintkWraps) {
    const Bytes sample = printk_record({.ts = 1, .text = std::string(KLEAK_PRINTK_MAX, 'y')});
    for (const std::size_t cut : {std::size_t{1}, std::size_t{20}, std::size_t{24}, std::size_t{500}, sample.size() - 1})
        EXPECT_EQ(split_wrapped(sample, cut), std::vector<Bytes>{sample}) << "cut at " << cut;
}

TEST(RecordBatchWrapped, UnsizableRestLongerThanTheBounceIsCutButStaysUndecodable) {
    Bytes unknown = concat({kfree_bytes(1), Bytes(2 * kMaxRecordBytes, std::byte{0})});
    const std::uint16_t kind = 77;
    std::memcpy(unknown.data() + offsetof(kleak_record_header, kind), &kind, sizeof kind);
    const auto records = split_wrapped(unknown, 100);
    ASSERT_EQ(records.size(), 1u);
    EXPECT_EQ(records[0].size(), kMaxRecordBytes);
    Event e;
    EXPECT_EQ(decode_record(records[0], 0, e), DecodeStatus::unknown_kind);
}

TEST(RecordBatchWrapped, TruncatedTailAcrossTheEnd) {
    const Bytes alloc = kmalloc_bytes(2);
    const Bytes sample = concat({kfree_bytes(1), Bytes(alloc.begin(), alloc.begin() + 30)});
    const auto records = split_wrapped(sample, 40);
    ASSERT_EQ(records.size(), 2u);
    EXPECT_EQ(records[1].size(), 30u);
}

}  // namespace
}  // namespace kleak::core
