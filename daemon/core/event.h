// One decoded trace record, as the pure core sees it. Decoding is the only
// place that knows the wire layout in bpf/kleak_abi.h.
#pragma once

#include <array>
#include <cstddef>
#include <cstring>
#include <cstdint>
#include <span>

#include "family.h"

namespace kleak::core {

enum class EventKind : std::uint16_t {
    kmalloc = 1,
    kfree = 2,
    cache_alloc = 3,
    cache_free = 4,
    printk = 5,  // bytes_req: text length, gfp_flags: record flags, ptr: the pipeline's text handle
    // A clock reading closing a batch: it ends the stamp window of the frees
    // before it (stamp_windows.h) and is never staged.
    time_mark = 6,
    // 7 is KLEAK_CACHE_ALLOC_FROM, decoded as cache_alloc.
    // The other families (family.h): their ptr is family_key() of the
    // record's pointer, their frees have no call site (0).
    page_alloc = 8,     // bytes_req = bytes_alloc: page_bytes(order)
    page_free = 9,
    percpu_alloc = 10,  // bytes_req: the size asked; bytes_alloc: over every CPU's unit
    percpu_free = 11,
    vmalloc_alloc = 12, // the area's size, guard page included
    vmalloc_free = 13,
    // 14 is KLEAK_CACHE_FREE_FROM, decoded as cache_free.
    // Who tgid is from now on (process_table.h): ptr and call_site hold the
    // 16 comm bytes (process_comm()), cache the cgroup v2 id.
    process = 15,
};

constexpr bool is_alloc(EventKind kind) {
    switch (kind) {
    case EventKind::kmalloc:
    case EventKind::cache_alloc:
    case EventKind::page_alloc:
    case EventKind::percpu_alloc:
    case EventKind::vmalloc_alloc:
        return true;
    default:
        return false;
    }
}
constexpr bool is_free(EventKind kind) {
    switch (kind) {
    case EventKind::kfree:
    case EventKind::cache_free:
    case EventKind::page_free:
    case EventKind::percpu_free:
    case EventKind::vmalloc_free:
        return true;
    default:
        return false;
    }
}

constexpr Family family_of(EventKind kind) {
    switch (kind) {
    case EventKind::page_alloc:
    case EventKind::page_free:
        return Family::page;
    case EventKind::percpu_alloc:
    case EventKind::percpu_free:
        return Family::percpu;
    case EventKind::vmalloc_alloc:
    case EventKind::vmalloc_free:
        return Family::vmalloc;
    default:
        return Family::slab;
    }
}

// A free's time. Most frees take no clock reading of their own (it costs more
// than the rest of the BPF program): their record carries their CPU's previous
// reading and KLEAK_TS_LOWER_BOUND. Once decoding has seen the next reading on
// that CPU (stamp_windows.h), ts_ns is that next reading, the latest the free
// can have happened, and bytes_req is its window: how much earlier it may
// have happened (ns; 0 for a free that read the clock; kUnboundedWindow for
// 4.29 s or more: then it may have happened any time before).
struct Event {
    std::uint64_t ts_ns = 0;
    std::uint64_t ptr = 0;
    std::uint64_t call_site = 0;
    std::uint32_t bytes_req = 0;    // allocations; frees: the stamp window (above)
    std::uint32_t bytes_alloc = 0;  // allocations only
    std::uint32_t gfp_flags = 0;    // allocations; frees: the record's flags (KLEAK_TS_*)
    std::uint32_t tgid = 0;         // printk; allocations that carry a stack
    std::uint32_t tid = 0;          // printk only
    std::uint32_t stack = 0;        // allocations: 1 + the kernel stack id (stack_trace.h), 0: none
    EventKind kind = EventKind::kmalloc;
    std::uint16_t cpu = 0;          // the ring the record came from
    // cache_alloc/cache_free from a KLEAK_CACHE_ALLOC_FROM/_FREE_FROM record:
    // its `struct kmem_cache *` (a kernel address, named by the daemon:
    // slab_caches.h); 0 otherwise.
    std::uint64_t cache = 0;
};

// The comm a process event carries (in ptr and call_site, in memory order).
inline std::array<char, 16> process_comm(const Event& event) {
    std::array<char, 16> comm;
    std::memcpy(comm.data(), &event.ptr, 8);
    std::memcpy(comm.data() + 8, &event.call_site, 8);
    return comm;
}

// A window too long for bytes_req: the free may have happened any time before ts_ns.
inline constexpr std::uint32_t kUnboundedWindow = 0xffffffff;

// The earliest a free can have happened (see Event).
constexpr std::uint64_t earliest_free_ns(const Event& free) {
    return free.bytes_req == kUnboundedWindow ? 0 : free.ts_ns - free.bytes_req;
}

enum class DecodeStatus {
    ok,
    too_short,     // shorter than the struct its kind needs
    unknown_kind,  // a kind this build does not know
};

// Size-checked decode of one raw ring record. Never reads past `bytes`, never
// assumes alignment (records are memcpy'd out).
DecodeStatus decode_record(std::span<const std::byte> bytes, std::uint16_t cpu, Event& out);

}  // namespace kleak::core
