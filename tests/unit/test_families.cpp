// Allocator families: their key spaces, page sizes, the decoding of their
// records, the tracker's per-family sites and totals, and the site picker the
// page and vmalloc BPF programs run (bpf/kleak_site.h) on fixture stacks.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <sstream>

#include "core/allocator_text.h"
#include "core/event.h"
#include "core/family_coverage.h"
#include "core/tracker.h"
#include "kleak_site.h"
#include "test_helpers.h"

namespace kleak::core {
namespace {

using test::record_bytes;

// Values that collide across families on purpose: the same 64-bit number as
// a slab pointer, a struct page, a percpu pointer and a vmalloc address.
constexpr std::uint64_t kSame = 0xffff888012345000;
constexpr std::uint64_t kSite = 0xffffffff81234567;

TEST(FamilyKey, SlabKeysArePointers) { EXPECT_EQ(family_key(Family::slab, kSame), kSame); }

TEST(FamilyKey, EqualValuesOfDifferentFamiliesNeverCollide) {
    for (const std::uint64_t v : {kSame, std::uint64_t{0x1234}, std::uint64_t{0}, ~std::uint64_t{0}}) {
        for (const Family a : kFamilies)
            for (const Family b : kFamilies)
                if (a != b) EXPECT_NE(family_key(a, v), family_key(b, v)) << family_name(a) << " " << family_name(b);
    }
}

TEST(FamilyKey, NoOtherFamilyKeyIsAKernelAddress) {
    // Slab pointers are kernel addresses: top four bits all ones.
    for (const Family f : {Family::page, Family::percpu, Family::vmalloc})
        for (const std::uint64_t v : {kSame, std::uint64_t{0x2e0c0}, ~std::uint64_t{0}})
            EXPECT_NE(family_key(f, v) >> 60, 0xfU);
}

TEST(FamilyKey, KernelAddressesOfOneFamilyStayApart) {
    EXPECT_NE(family_key(Family::vmalloc, 0xffffc90000010000), family_key(Family::vmalloc, 0xffffc90000011000));
    EXPECT_NE(family_key(Family::page, 0xffffea0000000040), family_key(Family::page, 0xffffea0000000080));
}

TEST(FamilyName, RoundTrips) {
    for (const Family f : kFamilies) EXPECT_EQ(parse_family(family_name(f)), f);
    EXPECT_EQ(parse_family("pages"), std::nullopt);
}

TEST(PageBytes, OrderToBytes) {
    EXPECT_EQ(page_bytes(0, 12), 4096u);
    EXPECT_EQ(page_bytes(1, 12), 8192u);
    EXPECT_EQ(page_bytes(3, 12), 32768u);
    EXPECT_EQ(page_bytes(10, 12), 4u << 20);
    EXPECT_EQ(page_bytes(0, 16), 65536u);  // 64K pages (arm64)
    EXPECT_EQ(page_bytes(20, 12), 0xffffffffu);  // clamped, never wrapped
}

kleak_page_alloc_record page_record(std::uint64_t page, unsigned order) {
    kleak_page_alloc_record rec{};
    rec.hdr.ts_ns = 77;
    rec.hdr.kind = KLEAK_PAGE_ALLOC;
    rec.page = page;
    rec.call_site = kSite;
    rec.gfp_flags = 0xcc0;
    rec.order = static_cast<__u8>(order);
    rec.page_shift = 12;
    rec.migratetype = 0;
    return rec;
}

kleak_free_record free_rec(std::uint16_t kind, std::uint64_t ptr) {
    kleak_free_record rec{};
    rec.hdr.ts_ns = 88;
    rec.hdr.kind = kind;
    rec.ptr = ptr;
    return rec;
}

kleak_alloc_record alloc_rec(std::uint16_t kind, std::uint64_t ptr, std::uint32_t req, std::uint32_t alloc) {
    kleak_alloc_record rec{};
    rec.hdr.ts_ns = 99;
    rec.hdr.kind = kind;
    rec.ptr = ptr;
    rec.call_site = kSite;
    rec.bytes_req = req;
    rec.bytes_alloc = alloc;
    return rec;
}

TEST(DecodeFamilies, PageAllocSizedByOrderAndKeyed) {
    Event e;
    ASSERT_EQ(decode_record(record_bytes(page_record(kSame, 2)), 1, e), DecodeStatus::ok);
    EXPECT_EQ(e.kind, EventKind::page_alloc);
    EXPECT_EQ(e.ptr, family_key(Family::page, kSame));
    EXPECT_EQ(e.call_site, kSite);
    EXPECT_EQ(e.bytes_alloc, 16384u);
    EXPECT_EQ(e.bytes_req, 16384u);
    EXPECT_EQ(e.gfp_flags, 0xcc0u);
    EXPECT_EQ(family_of(e.kind), Family::page);
}

TEST(DecodeFamilies, ShortPageRecordIsRefused) {
    auto bytes = record_bytes(page_record(kSame, 0));
    bytes.resize(sizeof(kleak_alloc_record) - 16);
    Event e;
    EXPECT_EQ(decode_record(bytes, 0, e), DecodeStatus::too_short);
}

TEST(DecodeFamilies, FreesAndAllocsOfEachFamilyKeyed) {
    const struct {
        std::uint16_t alloc, free;
        Family family;
    } kinds[] = {{KLEAK_PERCPU_ALLOC, KLEAK_PERCPU_FREE, Family::percpu},
                 {KLEAK_VMALLOC_ALLOC, KLEAK_VMALLOC_FREE, Family::vmalloc}};
    for (const auto& k : kinds) {
        Event a, f;
        ASSERT_EQ(decode_record(record_bytes(alloc_rec(k.alloc, kSame, 8, 16)), 0, a), DecodeStatus::ok);
        ASSERT_EQ(decode_record(record_bytes(free_rec(k.free, kSame)), 0, f), DecodeStatus::ok);
        EXPECT_TRUE(is_alloc(a.kind));
        EXPECT_TRUE(is_free(f.kind));
        EXPECT_EQ(a.ptr, family_key(k.family, kSame));
        EXPECT_EQ(f.ptr, a.ptr);
        EXPECT_EQ(a.bytes_req, 8u);
        EXPECT_EQ(a.bytes_alloc, 16u);
    }
    Event pf;
    ASSERT_EQ(decode_record(record_bytes(free_rec(KLEAK_PAGE_FREE, kSame)), 0, pf), DecodeStatus::ok);
    EXPECT_EQ(pf.ptr, family_key(Family::page, kSame));
}

Event decoded(const std::vector<std::byte>& bytes) {
    Event e;
    EXPECT_EQ(decode_record(bytes, 0, e), DecodeStatus::ok);
    return e;
}

TEST(TrackerFamilies, SameValueInEveryFamilyIsFourAllocations) {
    Tracker t;
    t.apply(test::alloc_event({.ts = 1, .ptr = kSame, .site = kSite, .req = 64, .alloc = 64}));
    t.apply(decoded(record_bytes(page_record(kSame, 0))));
    t.apply(decoded(record_bytes(alloc_rec(KLEAK_PERCPU_ALLOC, kSame, 8, 16))));
    t.apply(decoded(record_bytes(alloc_rec(KLEAK_VMALLOC_ALLOC, kSame, 8192, 8192))));
    EXPECT_EQ(t.totals().outstanding, 4u);
    EXPECT_EQ(t.totals().replaced, 0u);
    EXPECT_EQ(t.displaced_count(), 0u);
    // Four sites, though one call site: a site is one family's.
    EXPECT_EQ(t.sites().size(), 4u);
    // A page free frees the page, nothing else.
    t.apply(decoded(record_bytes(free_rec(KLEAK_PAGE_FREE, kSame))));
    EXPECT_EQ(t.totals().outstanding, 3u);
    EXPECT_EQ(t.family_totals(Family::page).outstanding, 0u);
    EXPECT_EQ(t.family_totals(Family::page).frees, 1u);
    EXPECT_EQ(t.family_totals(Family::slab).outstanding, 1u);
    EXPECT_EQ(t.family_totals(Family::percpu).outstanding_bytes, 16u);
    EXPECT_EQ(t.family_totals(Family::vmalloc).outstanding_bytes, 8192u);
    EXPECT_EQ(t.totals().unmatched_frees, 0u);
}

TEST(TrackerFamilies, UnmatchedFreesOfAFamilyStayInIt) {
    Tracker t;
    t.apply(decoded(record_bytes(free_rec(KLEAK_PAGE_FREE, 0xffffea0000001000))));
    t.apply(decoded(record_bytes(free_rec(KLEAK_PERCPU_FREE, 0x2e0c0))));
    EXPECT_EQ(t.family_totals(Family::page).unmatched_frees, 1u);
    EXPECT_EQ(t.family_totals(Family::percpu).unmatched_frees, 1u);
    EXPECT_EQ(t.family_totals(Family::slab).unmatched_frees, 0u);
    ASSERT_EQ(t.sites().size(), 2u);  // call site 0 of two families: two sites
    EXPECT_EQ(t.sites()[0].family, Family::page);
    EXPECT_EQ(t.sites()[1].family, Family::percpu);
}

// --- the site picker (bpf/kleak_site.h) ------------------------------------------

constexpr std::uint64_t kTracing = 0xffffffff81100000;   // bpf_trace_run4 and friends
constexpr std::uint64_t kPageAlloc = 0xffffffff81200000; // __alloc_pages_noprof
constexpr std::uint64_t kAllocMpol = 0xffffffff81201000; // alloc_pages_mpol
constexpr std::uint64_t kSlab = 0xffffffff81300000;      // allocate_slab
constexpr std::uint64_t kVmalloc = 0xffffffff81400000;   // __vmalloc_node_range
constexpr std::uint64_t kPipeWrite = 0xffffffff81500000; // anon_pipe_write
constexpr std::uint64_t kMapAlloc = 0xffffffff81600000;  // bpf_map_area_alloc

std::vector<kleak_text_range> fixture_table() {
    return padded_text_table({
        {kPageAlloc, 0x800, KLEAK_ROLE_PAGE_ALLOC},
        {kAllocMpol, 0x200, KLEAK_ROLE_PAGE_ALLOC},
        {kSlab, 0x400, KLEAK_ROLE_SLAB},
        {kVmalloc, 0x600, KLEAK_ROLE_VMALLOC},
    });
}

// As stack_site() in kleak.bpf.c leaves it: KLEAK_SITE_FRAMES slots, cleared,
// then the stack's frames.
std::uint64_t pick(const std::vector<std::uint64_t>& frames, std::uint32_t allocator, std::uint32_t& owner) {
    const auto table = fixture_table();
    std::array<__u64, KLEAK_SITE_FRAMES> buffer{};
    std::copy_n(frames.begin(), std::min<std::size_t>(frames.size(), buffer.size()), buffer.begin());
    return kleak_pick_site(buffer.data(), table.data(), allocator, &owner);
}

TEST(SitePick, RoleLookup) {
    const auto table = fixture_table();
    EXPECT_EQ(kleak_text_role(table.data(), kPageAlloc), KLEAK_ROLE_PAGE_ALLOC);
    EXPECT_EQ(kleak_text_role(table.data(), kPageAlloc + 0x7ff), KLEAK_ROLE_PAGE_ALLOC);
    EXPECT_EQ(kleak_text_role(table.data(), kPageAlloc + 0x800), KLEAK_ROLE_NONE);
    EXPECT_EQ(kleak_text_role(table.data(), kSlab + 0x10), KLEAK_ROLE_SLAB);
    EXPECT_EQ(kleak_text_role(table.data(), kTracing), KLEAK_ROLE_NONE);  // below every range
    EXPECT_EQ(kleak_text_role(table.data(), ~0ULL - 1), KLEAK_ROLE_NONE);
}

TEST(SitePick, PipeBufferPageIsAtThePipeWrite) {
    std::uint32_t owner = 99;
    EXPECT_EQ(pick({kTracing + 0x40, kTracing + 0x80, kPageAlloc + 0x120, kAllocMpol + 0x30, kPipeWrite + 0x1b0,
                    0xffffffff81700000},
                   KLEAK_ROLE_PAGE_ALLOC, owner),
              kPipeWrite + 0x1b0);
    EXPECT_EQ(owner, static_cast<std::uint32_t>(KLEAK_ROLE_NONE));
}

TEST(SitePick, SlabPageIsOwnedBySlab) {
    std::uint32_t owner = 99;
    EXPECT_EQ(pick({kTracing, kPageAlloc + 1, kSlab + 0x50, kPipeWrite}, KLEAK_ROLE_PAGE_ALLOC, owner), kSlab + 0x50);
    EXPECT_EQ(owner, static_cast<std::uint32_t>(KLEAK_ROLE_SLAB));
}

TEST(SitePick, VmallocAreaIsAtItsCaller) {
    std::uint32_t owner = 99;
    EXPECT_EQ(pick({kTracing, kVmalloc + 0x10, kVmalloc + 0x300, kMapAlloc + 0x44, kPipeWrite}, KLEAK_ROLE_VMALLOC,
                   owner),
              kMapAlloc + 0x44);
}

TEST(SitePick, NoAllocatorFrameNoSite) {
    std::uint32_t owner = 99;
    EXPECT_EQ(pick({kTracing, kPipeWrite, kMapAlloc}, KLEAK_ROLE_PAGE_ALLOC, owner), 0u);
    EXPECT_EQ(owner, static_cast<std::uint32_t>(KLEAK_ROLE_NONE));
    EXPECT_EQ(pick({kTracing, kPageAlloc, kAllocMpol}, KLEAK_ROLE_PAGE_ALLOC, owner), 0u);  // stack cut short
    EXPECT_EQ(pick({}, KLEAK_ROLE_PAGE_ALLOC, owner), 0u);
}

TEST(SitePick, ReadsAtMostItsFrames) {
    std::vector<std::uint64_t> frames(KLEAK_SITE_FRAMES, kPageAlloc);
    frames.push_back(kPipeWrite);  // past the bound: never read
    std::uint32_t owner = 99;
    EXPECT_EQ(pick(frames, KLEAK_ROLE_PAGE_ALLOC, owner), 0u);
}

TEST(AllocatorText, RolesByName) {
    EXPECT_EQ(allocator_role("__alloc_pages_noprof"), static_cast<std::uint32_t>(KLEAK_ROLE_PAGE_ALLOC));
    EXPECT_EQ(allocator_role("__alloc_frozen_pages_noprof"), static_cast<std::uint32_t>(KLEAK_ROLE_PAGE_ALLOC));
    EXPECT_EQ(allocator_role("alloc_pages_exact_nid_noprof.cold"), static_cast<std::uint32_t>(KLEAK_ROLE_PAGE_ALLOC));
    EXPECT_EQ(allocator_role("__slab_alloc.isra.0"), static_cast<std::uint32_t>(KLEAK_ROLE_SLAB));
    EXPECT_EQ(allocator_role("__kmalloc_large_node_noprof"), static_cast<std::uint32_t>(KLEAK_ROLE_SLAB));
    EXPECT_EQ(allocator_role("__vmalloc_node_range_noprof"), static_cast<std::uint32_t>(KLEAK_ROLE_VMALLOC));
    EXPECT_EQ(allocator_role("__kvmalloc_node_noprof"), static_cast<std::uint32_t>(KLEAK_ROLE_VMALLOC));
    EXPECT_EQ(allocator_role("pcpu_alloc_noprof"), static_cast<std::uint32_t>(KLEAK_ROLE_PERCPU));
    EXPECT_EQ(allocator_role("anon_pipe_write"), static_cast<std::uint32_t>(KLEAK_ROLE_NONE));
    EXPECT_EQ(allocator_role("bpf_map_area_alloc"), static_cast<std::uint32_t>(KLEAK_ROLE_NONE));
    EXPECT_EQ(allocator_role("vmalloc_to_page"), static_cast<std::uint32_t>(KLEAK_ROLE_NONE));
}

TEST(AllocatorText, RangesFromKallsyms) {
    std::istringstream kallsyms(
        "ffffffff81200000 T __alloc_pages_noprof\n"
        "ffffffff81200800 t __pfx_alloc_pages_mpol\n"
        "ffffffff81200810 T alloc_pages_mpol\n"
        "ffffffff81200a00 T anon_pipe_write\n"
        "ffffffff81300000 D some_data\n"
        "ffffffff81400000 T __vmalloc_node_range_noprof\n"
        "ffffffff81400600 T vmalloc_to_page\n"
        "ffffffffc0000000 t mod_alloc_pages\t[somemod]\n");
    const AllocatorText text = read_allocator_text(kallsyms);
    ASSERT_EQ(text.ranges.size(), 3u);
    EXPECT_EQ(text.ranges[0].start, 0xffffffff81200000u);
    EXPECT_EQ(text.ranges[0].size, 0x800u);
    EXPECT_EQ(text.ranges[1].start, 0xffffffff81200810u);
    EXPECT_EQ(text.ranges[1].size, 0x1f0u);
    EXPECT_EQ(text.ranges[2].role, static_cast<std::uint32_t>(KLEAK_ROLE_VMALLOC));
    EXPECT_EQ(text.ranges[2].size, 0x600u);
    EXPECT_FALSE(text.addresses_hidden);
}

TEST(AllocatorText, HiddenAddresses) {
    std::istringstream kallsyms("0000000000000000 T __alloc_pages_noprof\n0000000000000000 T anon_pipe_write\n");
    const AllocatorText text = read_allocator_text(kallsyms);
    EXPECT_TRUE(text.ranges.empty());
    EXPECT_TRUE(text.addresses_hidden);
}

// --- coverage ---------------------------------------------------------------------

TEST(Coverage, ParsesTheKernelsCounters) {
    KernelMemoryCounters c;
    std::istringstream meminfo("MemTotal:  2000 kB\nVmallocUsed:   12345 kB\nPercpu:    2560 kB\n");
    parse_meminfo(meminfo, c);
    std::istringstream vmstat("nr_free_pages 10\npgalloc_dma 1\npgalloc_dma32 20\npgalloc_normal 300\npgfree 400\n");
    parse_vmstat(vmstat, c);
    EXPECT_EQ(c.vmalloc_used_bytes, 12345u * 1024);
    EXPECT_EQ(c.percpu_bytes, 2560u * 1024);
    EXPECT_EQ(c.pgalloc_pages, 321u);
    EXPECT_EQ(c.pgfree_pages, 400u);
}

TEST(Coverage, SharesAgainstTheKernel) {
    Tracker t;
    t.apply(decoded(record_bytes(alloc_rec(KLEAK_PERCPU_ALLOC, 0x2e0c0, 8, 1024))));
    CoverageInput in;
    in.traced[static_cast<int>(Family::percpu)] = true;
    in.kernel_now.percpu_bytes = 4096;
    in.page_counts.assign(KLEAK_PAGE_COUNTS, 0);
    in.page_counts[KLEAK_PAGES_TRACKED] = 10;
    in.page_counts[KLEAK_PAGES_MOVABLE] = 90;
    in.page_counts[KLEAK_PAGES_FREED] = 50;
    in.kernel_at_start.pgalloc_pages = 1000;
    in.kernel_now.pgalloc_pages = 1100;
    in.kernel_at_start.pgfree_pages = 1000;
    in.kernel_now.pgfree_pages = 1100;
    const nlohmann::json j = coverage_to_json(t, in);
    EXPECT_EQ(j["percpu"]["live_bytes"], 1024u);
    EXPECT_DOUBLE_EQ(j["percpu"]["share"].get<double>(), 0.25);
    EXPECT_TRUE(j["vmalloc"]["share"].is_null());
    EXPECT_EQ(j["page"]["allocated_pages"]["total"], 100u);
    EXPECT_DOUBLE_EQ(j["page"]["allocated_share"].get<double>(), 1.0);
    EXPECT_DOUBLE_EQ(j["page"]["freed_share"].get<double>(), 0.5);
}

}  // namespace
}  // namespace kleak::core
