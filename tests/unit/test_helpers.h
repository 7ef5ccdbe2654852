// Shared helpers for the core unit tests: event and raw-record builders,
// fixture and golden-file access, and field-wise views of the tracker's
// aggregates so gtest can compare and print them.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "core/event.h"
#include "core/tracker.h"
#include "kleak_abi.h"

#ifndef KLEAK_FIXTURES_DIR
#error "KLEAK_FIXTURES_DIR must name tests/fixtures (set by tests/unit/CMakeLists.txt)"
#endif

namespace kleak::test {

// SplitMix64: tiny and fully specified, so a seed means the same stream with
// every standard library (std:: distributions are implementation-defined).
class Prng {
public:
    explicit Prng(std::uint64_t seed) : state_(seed) {}
    std::uint64_t next() {
        std::uint64_t z = (state_ += 0x9e3779b97f4a7c15);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
        z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
        return z ^ (z >> 31);
    }
    std::uint64_t below(std::uint64_t n) { return next() % n; }
    std::uint64_t between(std::uint64_t lo, std::uint64_t hi) { return lo + below(hi - lo + 1); }  // inclusive
    bool percent(unsigned p) { return below(100) < p; }

private:
    std::uint64_t state_;
};

using core::Event;
using core::EventKind;

// --- events -------------------------------------------------------------------

struct AllocSpec {
    std::uint64_t ts = 0;
    std::uint16_t cpu = 0;
    std::uint64_t ptr = 0;
    std::uint64_t site = 0;
    std::uint32_t req = 0;
    std::uint32_t alloc = 0;
    EventKind kind = EventKind::kmalloc;
    std::uint32_t gfp = 0;
    std::uint32_t tgid = 0;
    std::uint32_t stack = 0;  // 1 + a stack id, 0: none
    std::uint64_t cache = 0;  // cache_alloc: its kmem_cache (encoded as KLEAK_CACHE_ALLOC_FROM when set)
};

struct FreeSpec {
    std::uint64_t ts = 0;
    std::uint16_t cpu = 0;
    std::uint64_t ptr = 0;
    std::uint64_t site = 0;
    EventKind kind = EventKind::kfree;
    std::uint32_t tgid = 0;
    std::uint16_t flags = 0;   // the record's header flags: KLEAK_TS_LOWER_BOUND
    std::uint32_t window = 0;  // a stamped free's window (Event::bytes_req); not on the wire
    std::uint64_t cache = 0;   // cache_free: its kmem_cache (encoded as KLEAK_CACHE_FREE_FROM when set)
};

// Designated initializers keep call sites readable:
//   alloc_event({.ts = 100, .cpu = 1, .ptr = 0x1000, .site = kSite, .req = 10, .alloc = 16})
inline Event alloc_event(const AllocSpec& s) {
    Event e;
    e.ts_ns = s.ts;
    e.cpu = s.cpu;
    e.ptr = s.ptr;
    e.call_site = s.site;
    e.bytes_req = s.req;
    e.bytes_alloc = s.alloc;
    e.gfp_flags = s.gfp;
    e.tgid = s.tgid;
    e.stack = s.stack;
    e.kind = s.kind;
    e.cache = s.cache;
    return e;
}

// An Event full of values no decode should leave behind.
inline Event stale_event() {
    Event e;
    e.ts_ns = e.ptr = e.call_site = 0xdeadbeefdeadbeef;
    e.bytes_req = e.bytes_alloc = e.gfp_flags = e.tgid = e.tid = e.stack = 0xdeadbeef;
    e.kind = EventKind::cache_alloc;
    e.cpu = 0xdead;
    e.cache = 0xdeadbeefdeadbeef;
    return e;
}

inline Event free_event(const FreeSpec& s) {
    Event e;
    e.ts_ns = s.ts;
    e.cpu = s.cpu;
    e.ptr = s.ptr;
    e.call_site = s.site;
    e.tgid = s.tgid;
    e.kind = s.kind;
    e.gfp_flags = s.flags;  // a free's Event carries its record's flags
    e.bytes_req = s.window;
    e.cache = s.cache;
    return e;
}

// --- raw ABI records ------------------------------------------------------------

template <class Record>
std::vector<std::byte> record_bytes(const Record& record) {
    std::vector<std::byte> out(sizeof record);
    std::memcpy(out.data(), &record, sizeof record);
    return out;
}

inline kleak_alloc_record alloc_record(const Event& e) {
    kleak_alloc_record rec{};
    rec.hdr.ts_ns = e.ts_ns;
    rec.hdr.kind = static_cast<__u16>(e.kind);
    rec.hdr.tgid = e.tgid;
    rec.ptr = e.ptr;
    rec.call_site = e.call_site;
    rec.bytes_req = e.bytes_req;
    rec.bytes_alloc = e.bytes_alloc;
    rec.gfp_flags = e.gfp_flags;
    rec.stack = e.stack;
    return rec;
}

// A KLEAK_CACHE_ALLOC_FROM record (ABI 3, kernels 6.1+): an allocation
// record and the `struct kmem_cache *` it came from, 56 bytes.
inline kleak_cache_alloc_record cache_alloc_from_record(const Event& e) {
    kleak_cache_alloc_record rec{};
    rec.alloc = alloc_record(e);
    rec.alloc.hdr.kind = KLEAK_CACHE_ALLOC_FROM;
    rec.cache = e.cache;
    return rec;
}

// A free's window (bytes_req) is worked out by the reader, never written.
inline kleak_free_record free_record(const Event& e) {
    kleak_free_record rec{};
    rec.hdr.ts_ns = e.ts_ns;
    rec.hdr.kind = static_cast<__u16>(e.kind);
    rec.hdr.flags = static_cast<__u16>(e.gfp_flags);
    rec.hdr.tgid = e.tgid;
    rec.ptr = e.ptr;
    rec.call_site = e.call_site;
    return rec;
}

// A KLEAK_CACHE_FREE_FROM record (kernels 6.1+): a free record and the
// `struct kmem_cache *` the object goes back to, 40 bytes.
inline kleak_cache_free_record cache_free_from_record(const Event& e) {
    kleak_cache_free_record rec{};
    rec.free = free_record(e);
    rec.free.hdr.kind = KLEAK_CACHE_FREE_FROM;
    rec.cache = e.cache;
    return rec;
}

// The bytes the BPF program would have put in the ring for `e` (its cpu is
// implied by which ring it goes to, so it is not encoded). A cache_alloc or
// cache_free that names its cache is a KLEAK_CACHE_ALLOC_FROM or
// KLEAK_CACHE_FREE_FROM record.
inline std::vector<std::byte> encode_event(const Event& e) {
    if (e.kind == EventKind::cache_alloc && e.cache != 0) return record_bytes(cache_alloc_from_record(e));
    if (e.kind == EventKind::cache_free && e.cache != 0) return record_bytes(cache_free_from_record(e));
    return core::is_alloc(e.kind) ? record_bytes(alloc_record(e)) : record_bytes(free_record(e));
}

// A KLEAK_TIME_MARK: a bare header holding a fresh clock reading, closing a
// batch that holds flagged frees.
inline std::vector<std::byte> time_mark_record(std::uint64_t ts) {
    kleak_time_mark mark{};
    mark.hdr.ts_ns = ts;
    mark.hdr.kind = KLEAK_TIME_MARK;
    return record_bytes(mark);
}

// A printk:console record as the BPF program writes it: the 24-byte header,
// then exactly len = text.size() bytes (not NUL-terminated).
struct PrintkSpec {
    std::uint64_t ts = 0;
    std::string_view text;
    std::uint16_t flags = 0;  // KLEAK_PRINTK_TRUNCATED
    std::uint32_t tgid = 0;
    std::uint32_t tid = 0;
};

inline std::vector<std::byte> printk_record(const PrintkSpec& s) {
    std::vector<std::byte> out(KLEAK_PRINTK_HEADER_SIZE + s.text.size());
    kleak_record_header hdr{};
    hdr.ts_ns = s.ts;
    hdr.kind = KLEAK_PRINTK;
    hdr.flags = s.flags;
    hdr.tgid = s.tgid;
    const auto len = static_cast<std::uint32_t>(s.text.size());
    std::memcpy(out.data(), &hdr, sizeof hdr);
    std::memcpy(out.data() + offsetof(kleak_printk_record, len), &len, sizeof len);
    std::memcpy(out.data() + offsetof(kleak_printk_record, tid), &s.tid, sizeof s.tid);
    if (!s.text.empty()) std::memcpy(out.data() + KLEAK_PRINTK_HEADER_SIZE, s.text.data(), s.text.size());
    return out;
}

// Every field of an Event, for exact comparisons with readable failures.
inline auto event_fields(const Event& e) {
    return std::make_tuple(e.ts_ns, e.cpu, static_cast<int>(e.kind), e.ptr, e.call_site, e.bytes_req, e.bytes_alloc,
                           e.gfp_flags, e.tgid, e.tid, e.stack, e.cache);
}

// --- tracker aggregates -----------------------------------------------------------

inline auto site_fields(const core::SiteStats& s) {
    return std::make_tuple(s.call_site, static_cast<int>(s.kind), s.allocs, s.bytes_alloc, s.bytes_req, s.frees,
                           s.bytes_freed, s.replaced, s.replaced_bytes, s.outstanding, s.outstanding_bytes,
                           s.free_calls, s.unmatched_frees);
}

inline auto totals_fields(const core::Totals& t) {
    return std::make_tuple(t.allocs, t.frees, t.bytes_alloc, t.bytes_req, t.bytes_freed, t.unmatched_frees,
                           t.replaced, t.outstanding, t.outstanding_bytes, t.reordered_frees);
}

inline const core::SiteStats& site_of(const core::Tracker& tracker, std::uint64_t call_site) {
    for (const core::SiteStats& s : tracker.sites())
        if (s.call_site == call_site) return s;
    ADD_FAILURE() << "no site 0x" << std::hex << call_site;
    static const core::SiteStats missing{};
    return missing;
}

// What totals must be if they are kept consistent with the sites.
// reordered_frees has no per-site count (a reordered free is in `frees`):
// left 0 here, see the Tracker overload.
inline core::Totals sum_over_sites(const std::vector<core::SiteStats>& sites) {
    core::Totals t;
    for (const core::SiteStats& s : sites) core::add_site_counts(t, s);
    return t;
}

// The same, taking reordered_frees, which no site breaks down, from the tracker.
inline core::Totals sum_over_sites(const core::Tracker& tracker) {
    core::Totals t = sum_over_sites(tracker.sites());
    t.reordered_frees = tracker.totals().reordered_frees;
    return t;
}

// Sites keyed by call site (interning order depends on event order).
inline std::map<std::uint64_t, decltype(site_fields(core::SiteStats{}))> sites_by_address(const core::Tracker& tracker) {
    std::map<std::uint64_t, decltype(site_fields(core::SiteStats{}))> out;
    for (const core::SiteStats& s : tracker.sites()) out.emplace(s.call_site, site_fields(s));
    return out;
}

// Live allocations as ptr -> (ts, allocating call site, bytes). A pointer
// listed twice (a displaced entry beside the allocation that took its
// pointer, tracker.h) is a failure here: use outstanding_entries() where
// displaced entries may be left, or settle() first.
inline std::map<std::uint64_t, std::tuple<std::uint64_t, std::uint64_t, std::uint32_t>> outstanding_by_ptr(
    const core::Tracker& tracker) {
    std::map<std::uint64_t, std::tuple<std::uint64_t, std::uint64_t, std::uint32_t>> out;
    tracker.for_each_outstanding([&](std::uint64_t ptr, const core::OutstandingAllocation& a) {
        const bool first = out.emplace(ptr, std::make_tuple(a.ts_ns, tracker.sites()[a.site].call_site, a.bytes_alloc)).second;
        EXPECT_TRUE(first) << "0x" << std::hex << ptr << " is listed twice: a displaced entry? use outstanding_entries()";
    });
    return out;
}

// Every outstanding allocation, displaced ones included, as sorted
// (ptr, ts, allocating call site, bytes).
using OutstandingEntry = std::tuple<std::uint64_t, std::uint64_t, std::uint64_t, std::uint32_t>;
inline std::vector<OutstandingEntry> outstanding_entries(const core::Tracker& tracker) {
    std::vector<OutstandingEntry> out;
    tracker.for_each_outstanding([&](std::uint64_t ptr, const core::OutstandingAllocation& a) {
        out.emplace_back(ptr, a.ts_ns, tracker.sites()[a.site].call_site, a.bytes_alloc);
    });
    std::sort(out.begin(), out.end());
    return out;
}

// --- fixtures and golden files ------------------------------------------------------

inline std::string fixture_path(std::string_view name) { return std::string(KLEAK_FIXTURES_DIR) + "/" + std::string(name); }

inline std::string read_fixture(std::string_view name) {
    std::ifstream in(fixture_path(name), std::ios::binary);
    EXPECT_TRUE(in.good()) << "cannot open fixture " << fixture_path(name);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

// Compares `actual` with tests/fixtures/<name> byte for byte.
// To regenerate after an intended output change, run the test with
// KLEAK_UPDATE_GOLDEN=1 (e.g. `KLEAK_UPDATE_GOLDEN=1 ctest -L unit`), which
// rewrites the golden file in the source tree; review the diff before committing.
inline void expect_matches_golden(std::string_view name, const std::string& actual) {
    const char* update = std::getenv("KLEAK_UPDATE_GOLDEN");
    if (update != nullptr && std::string_view(update) == "1") {
        std::ofstream out(fixture_path(name), std::ios::binary | std::ios::trunc);
        out << actual;
        ASSERT_TRUE(out.good()) << "cannot write golden file " << fixture_path(name);
        std::cout << "[golden] rewrote " << fixture_path(name) << "\n";
        return;
    }
    EXPECT_EQ(read_fixture(name), actual) << "golden file " << fixture_path(name)
                                          << " differs; rerun with KLEAK_UPDATE_GOLDEN=1 to regenerate";
}

}  // namespace kleak::test
