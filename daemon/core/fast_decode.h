// decode_record() for the hot path: allocation and free records, the bulk of
// every stream, are decoded inline here (no call, no switch over every kind);
// anything else, or anything short, goes to decode_record(), so the results
// are the same for every input (tests/unit/test_fast_decode.cpp holds it to
// that).
#pragma once

#include <cstddef>
#include <cstring>
#include <span>

#include "event.h"
#include "kleak_abi.h"

namespace kleak::core {

// The fields allocation and free records share: header, pointer, call site.
template <class Record>
inline void copy_shared_fields(const Record& rec, std::uint16_t cpu, Event& out) {
    out.ts_ns = rec.hdr.ts_ns;
    out.ptr = rec.ptr;
    out.call_site = rec.call_site;
    out.tgid = rec.hdr.tgid;
    out.kind = static_cast<EventKind>(rec.hdr.kind);
    out.cpu = cpu;
}

inline void copy_alloc_fields(const kleak_alloc_record& rec, std::uint16_t cpu, Event& out) {
    copy_shared_fields(rec, cpu, out);
    out.bytes_req = rec.bytes_req;
    out.bytes_alloc = rec.bytes_alloc;
    out.gfp_flags = rec.gfp_flags;
    out.tid = 0;
    out.stack = rec.stack;
}

inline DecodeStatus decode_record_fast(std::span<const std::byte> bytes, std::uint16_t cpu, Event& out) {
    if (bytes.size() >= sizeof(kleak_alloc_record)) {
        kleak_alloc_record rec;
        std::memcpy(&rec, bytes.data(), sizeof rec);
        if (rec.hdr.kind == KLEAK_KMALLOC || rec.hdr.kind == KLEAK_CACHE_ALLOC) {
            copy_alloc_fields(rec, cpu, out);
            out.cache = 0;
            return DecodeStatus::ok;
        }
        if (rec.hdr.kind == KLEAK_CACHE_ALLOC_FROM && bytes.size() >= sizeof(kleak_cache_alloc_record)) {
            copy_alloc_fields(rec, cpu, out);
            out.kind = EventKind::cache_alloc;
            std::memcpy(&out.cache, bytes.data() + offsetof(kleak_cache_alloc_record, cache), sizeof out.cache);
            return DecodeStatus::ok;
        }
    }
    if (bytes.size() >= sizeof(kleak_free_record)) {
        kleak_free_record rec;
        std::memcpy(&rec, bytes.data(), sizeof rec);
        const bool with_cache =
            rec.hdr.kind == KLEAK_CACHE_FREE_FROM && bytes.size() >= sizeof(kleak_cache_free_record);
        if (rec.hdr.kind == KLEAK_KFREE || rec.hdr.kind == KLEAK_CACHE_FREE || with_cache) {
            copy_shared_fields(rec, cpu, out);
            out.bytes_req = out.bytes_alloc = out.tid = out.stack = 0;
            out.gfp_flags = rec.hdr.flags;
            out.cache = 0;
            if (with_cache) {
                out.kind = EventKind::cache_free;
                std::memcpy(&out.cache, bytes.data() + offsetof(kleak_cache_free_record, cache), sizeof out.cache);
            }
            return DecodeStatus::ok;
        }
    }
    return decode_record(bytes, cpu, out);
}

}  // namespace kleak::core
