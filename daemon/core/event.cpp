#include "event.h"

#include <cstring>

#include "kleak_abi.h"
#include "printk.h"

namespace kleak::core {

static_assert(KLEAK_ABI_VERSION == 6, "update the static_asserts below with the ABI");
static_assert(sizeof(kleak_record_header) == 16);
static_assert(offsetof(kleak_record_header, ts_ns) == 0);
static_assert(offsetof(kleak_record_header, kind) == 8);
static_assert(offsetof(kleak_record_header, tgid) == 12);
static_assert(sizeof(kleak_free_record) == 32);
static_assert(offsetof(kleak_free_record, ptr) == 16);
static_assert(offsetof(kleak_free_record, call_site) == 24);
static_assert(sizeof(kleak_alloc_record) == 48);
static_assert(offsetof(kleak_alloc_record, ptr) == 16);
static_assert(offsetof(kleak_alloc_record, call_site) == 24);
static_assert(offsetof(kleak_alloc_record, bytes_req) == 32);
static_assert(offsetof(kleak_alloc_record, bytes_alloc) == 36);
static_assert(offsetof(kleak_alloc_record, gfp_flags) == 40);
static_assert(offsetof(kleak_alloc_record, stack) == 44);
static_assert(sizeof(kleak_cache_alloc_record) == 56);
static_assert(offsetof(kleak_cache_alloc_record, cache) == 48);
static_assert(sizeof(kleak_cache_free_record) == 40);
static_assert(offsetof(kleak_cache_free_record, cache) == 32);
static_assert(static_cast<int>(EventKind::kmalloc) == KLEAK_KMALLOC);
static_assert(static_cast<int>(EventKind::kfree) == KLEAK_KFREE);
static_assert(static_cast<int>(EventKind::cache_alloc) == KLEAK_CACHE_ALLOC);
static_assert(static_cast<int>(EventKind::cache_free) == KLEAK_CACHE_FREE);
static_assert(static_cast<int>(EventKind::printk) == KLEAK_PRINTK);
static_assert(static_cast<int>(EventKind::time_mark) == KLEAK_TIME_MARK);
static_assert(sizeof(kleak_time_mark) == KLEAK_TIME_MARK_BYTES);
static_assert(sizeof(kleak_page_alloc_record) == 40);
static_assert(offsetof(kleak_page_alloc_record, page) == 16);
static_assert(offsetof(kleak_page_alloc_record, call_site) == 24);
static_assert(offsetof(kleak_page_alloc_record, gfp_flags) == 32);
static_assert(offsetof(kleak_page_alloc_record, order) == 36);
static_assert(offsetof(kleak_page_alloc_record, page_shift) == 37);
static_assert(offsetof(kleak_page_alloc_record, migratetype) == 38);
static_assert(static_cast<int>(EventKind::page_alloc) == KLEAK_PAGE_ALLOC);
static_assert(static_cast<int>(EventKind::page_free) == KLEAK_PAGE_FREE);
static_assert(static_cast<int>(EventKind::percpu_alloc) == KLEAK_PERCPU_ALLOC);
static_assert(static_cast<int>(EventKind::percpu_free) == KLEAK_PERCPU_FREE);
static_assert(static_cast<int>(EventKind::vmalloc_alloc) == KLEAK_VMALLOC_ALLOC);
static_assert(static_cast<int>(EventKind::vmalloc_free) == KLEAK_VMALLOC_FREE);
static_assert(static_cast<int>(EventKind::process) == KLEAK_PROCESS);
static_assert(sizeof(kleak_process_record) == 40);
static_assert(offsetof(kleak_process_record, cgroup_id) == 16);
static_assert(offsetof(kleak_process_record, comm) == 24);
static_assert(sizeof(kleak_process_seen) == 24);

DecodeStatus decode_record(std::span<const std::byte> bytes, std::uint16_t cpu, Event& out) {
    kleak_record_header hdr;
    if (bytes.size() < sizeof hdr) return DecodeStatus::too_short;
    std::memcpy(&hdr, bytes.data(), sizeof hdr);

    out.ts_ns = hdr.ts_ns;
    out.tgid = hdr.tgid;
    out.cpu = cpu;
    switch (hdr.kind) {
    case KLEAK_PAGE_ALLOC: {
        kleak_page_alloc_record rec;
        if (bytes.size() < sizeof rec) return DecodeStatus::too_short;
        std::memcpy(&rec, bytes.data(), sizeof rec);
        out.kind = EventKind::page_alloc;
        out.ptr = family_key(Family::page, rec.page);
        out.call_site = rec.call_site;
        out.bytes_req = out.bytes_alloc = page_bytes(rec.order, rec.page_shift);
        out.gfp_flags = rec.gfp_flags;
        out.tid = out.stack = 0;
        out.cache = 0;
        return DecodeStatus::ok;
    }
    case KLEAK_PERCPU_ALLOC:
    case KLEAK_VMALLOC_ALLOC:
    case KLEAK_KMALLOC:
    case KLEAK_CACHE_ALLOC: {
        kleak_alloc_record rec;
        if (bytes.size() < sizeof rec) return DecodeStatus::too_short;
        std::memcpy(&rec, bytes.data(), sizeof rec);
        out.kind = static_cast<EventKind>(hdr.kind);
        out.ptr = family_key(family_of(out.kind), rec.ptr);
        out.call_site = rec.call_site;
        out.bytes_req = rec.bytes_req;
        out.bytes_alloc = rec.bytes_alloc;
        out.gfp_flags = rec.gfp_flags;
        out.tid = 0;
        out.stack = rec.stack;
        out.cache = 0;
        return DecodeStatus::ok;
    }
    case KLEAK_CACHE_ALLOC_FROM: {
        kleak_cache_alloc_record rec;
        if (bytes.size() < sizeof rec) return DecodeStatus::too_short;
        std::memcpy(&rec, bytes.data(), sizeof rec);
        out.kind = EventKind::cache_alloc;
        out.ptr = rec.alloc.ptr;
        out.call_site = rec.alloc.call_site;
        out.bytes_req = rec.alloc.bytes_req;
        out.bytes_alloc = rec.alloc.bytes_alloc;
        out.gfp_flags = rec.alloc.gfp_flags;
        out.tid = 0;
        out.stack = rec.alloc.stack;
        out.cache = rec.cache;
        return DecodeStatus::ok;
    }
    case KLEAK_PAGE_FREE:
    case KLEAK_PERCPU_FREE:
    case KLEAK_VMALLOC_FREE:
    case KLEAK_KFREE:
    case KLEAK_CACHE_FREE: {
        kleak_free_record rec;
        if (bytes.size() < sizeof rec) return DecodeStatus::too_short;
        std::memcpy(&rec, bytes.data(), sizeof rec);
        out.kind = static_cast<EventKind>(hdr.kind);
        out.ptr = family_key(family_of(out.kind), rec.ptr);
        out.call_site = rec.call_site;
        out.bytes_req = out.bytes_alloc = out.tid = out.stack = 0;
        out.gfp_flags = hdr.flags;
        out.cache = 0;
        return DecodeStatus::ok;
    }
    case KLEAK_CACHE_FREE_FROM: {
        kleak_cache_free_record rec;
        if (bytes.size() < sizeof rec) return DecodeStatus::too_short;
        std::memcpy(&rec, bytes.data(), sizeof rec);
        out.kind = EventKind::cache_free;
        out.ptr = rec.free.ptr;
        out.call_site = rec.free.call_site;
        out.bytes_req = out.bytes_alloc = out.tid = out.stack = 0;
        out.gfp_flags = hdr.flags;
        out.cache = rec.cache;
        return DecodeStatus::ok;
    }
    case KLEAK_PROCESS: {
        kleak_process_record rec;
        if (bytes.size() < sizeof rec) return DecodeStatus::too_short;
        std::memcpy(&rec, bytes.data(), sizeof rec);
        out.kind = EventKind::process;
        std::memcpy(&out.ptr, rec.comm, 8);
        std::memcpy(&out.call_site, rec.comm + 8, 8);
        out.cache = rec.cgroup_id;
        out.bytes_req = out.bytes_alloc = out.gfp_flags = out.tid = out.stack = 0;
        return DecodeStatus::ok;
    }
    case KLEAK_TIME_MARK:
        out.kind = EventKind::time_mark;
        out.ptr = out.call_site = out.cache = 0;
        out.bytes_req = out.bytes_alloc = out.gfp_flags = out.tid = out.stack = 0;
        return DecodeStatus::ok;
    case KLEAK_PRINTK: {
        const auto text = printk_text(bytes);
        if (!text) return DecodeStatus::too_short;
        std::uint32_t tid = 0;
        std::memcpy(&tid, bytes.data() + offsetof(kleak_printk_record, tid), sizeof tid);
        out.kind = EventKind::printk;
        out.ptr = out.call_site = out.cache = 0;
        out.bytes_req = static_cast<std::uint32_t>(text->size());
        out.bytes_alloc = 0;
        out.gfp_flags = hdr.flags;
        out.tid = tid;
        out.stack = 0;
        return DecodeStatus::ok;
    }
    default:
        return DecodeStatus::unknown_kind;
    }
}

}  // namespace kleak::core
