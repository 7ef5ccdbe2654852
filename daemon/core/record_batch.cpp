#include "record_batch.h"

#include <cstdint>
#include <cstring>

#include "kleak_abi.h"

namespace kleak::core {

static_assert(kMaxRecordBytes == KLEAK_PRINTK_HEADER_SIZE + KLEAK_PRINTK_MAX);
static_assert(kMaxRecordBytes % 8 == 0, "the longest printk record needs no padding inside a batch");
static_assert(kRecordSizeProbeBytes == KLEAK_PRINTK_HEADER_SIZE);
static_assert(offsetof(kleak_printk_record, len) + sizeof(__u32) <= kRecordSizeProbeBytes);

namespace {

constexpr std::size_t round_up_8(std::size_t n) { return (n + 7) & ~std::size_t{7}; }

// `need` bytes when that many are left, else 0 (a truncated record).
constexpr std::size_t if_present(std::size_t need, std::size_t rest_size) { return rest_size >= need ? need : 0; }

}  // namespace

std::size_t record_size_at(std::span<const std::byte> start, std::size_t rest_size) {
    if (rest_size < sizeof(kleak_record_header) || start.size() < sizeof(kleak_record_header)) return 0;
    kleak_record_header hdr;
    std::memcpy(&hdr, start.data(), sizeof hdr);
    switch (hdr.kind) {
    case KLEAK_KMALLOC:
    case KLEAK_CACHE_ALLOC:
    case KLEAK_PERCPU_ALLOC:
    case KLEAK_VMALLOC_ALLOC:
        return if_present(sizeof(kleak_alloc_record), rest_size);
    case KLEAK_PAGE_ALLOC:
        return if_present(sizeof(kleak_page_alloc_record), rest_size);
    case KLEAK_CACHE_ALLOC_FROM:
        return if_present(sizeof(kleak_cache_alloc_record), rest_size);
    case KLEAK_KFREE:
    case KLEAK_CACHE_FREE:
    case KLEAK_PAGE_FREE:
    case KLEAK_PERCPU_FREE:
    case KLEAK_VMALLOC_FREE:
        return if_present(sizeof(kleak_free_record), rest_size);
    case KLEAK_CACHE_FREE_FROM:
        return if_present(sizeof(kleak_cache_free_record), rest_size);
    case KLEAK_TIME_MARK:
        return if_present(sizeof(kleak_time_mark), rest_size);
    case KLEAK_PROCESS:
        return if_present(sizeof(kleak_process_record), rest_size);
    case KLEAK_PRINTK: {
        if (rest_size < KLEAK_PRINTK_HEADER_SIZE || start.size() < KLEAK_PRINTK_HEADER_SIZE) return 0;
        std::uint32_t len = 0;
        std::memcpy(&len, start.data() + offsetof(kleak_printk_record, len), sizeof len);
        if (len > KLEAK_PRINTK_MAX) return 0;
        const std::size_t unpadded = KLEAK_PRINTK_HEADER_SIZE + std::size_t{len};
        if (rest_size < unpadded) return 0;
        // Inside a batch the next record starts at the 8-byte boundary; a
        // sample that ends before it is a lone (or last) unpadded record.
        return std::min(rest_size, round_up_8(unpadded));
    }
    default:
        return 0;
    }
}

bool read_header(std::span<const std::byte> record, kleak_record_header& out) {
    if (record.size() < sizeof out) return false;
    std::memcpy(&out, record.data(), sizeof out);
    return true;
}

bool is_time_mark(std::span<const std::byte> record) {
    kleak_record_header hdr;
    return read_header(record, hdr) && hdr.kind == KLEAK_TIME_MARK;
}

void copy_from_pieces(std::span<const std::byte> first, std::span<const std::byte> second, std::size_t offset,
                      std::span<std::byte> out) {
    std::size_t done = 0;
    if (offset < first.size()) {
        done = std::min(out.size(), first.size() - offset);
        std::memcpy(out.data(), first.data() + offset, done);
    }
    if (done < out.size()) {
        const std::size_t from = offset + done - first.size();
        std::memcpy(out.data() + done, second.data() + from, out.size() - done);
    }
}

}  // namespace kleak::core
