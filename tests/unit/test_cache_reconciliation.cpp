// Slab caches (core/slab_caches.h) and kleakd's live counts reconciled with
// /proc/slabinfo (core/cache_reconciliation.h): cache keys and names, the
// tracker's live count per class, parsing slabinfo, the per-cache rows, the
// excess and each site's share of it, and the untracked-frees verdict, the
// `cache` of suspects/leaks rows and the JSON they lead to.
#include <gtest/gtest.h>

#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "core/cache_reconciliation.h"
#include "core/leaks_query.h"
#include "core/site_verdicts.h"
#include "core/slab_caches.h"
#include "core/suspects_query.h"
#include "core/symbolizer.h"
#include "core/tracker.h"
#include "core/verdict.h"
#include "test_helpers.h"

namespace kleak::core {
namespace {

using nlohmann::json;
using test::alloc_event;
using test::free_event;
using test::site_of;

// `struct kmem_cache *` values as KLEAK_CACHE_ALLOC_FROM records carry them.
constexpr std::uint64_t kFilp = 0xffff888100001000;
constexpr std::uint64_t kInodeCache = 0xffff888100002000;
constexpr std::uint64_t kMapleNode = 0xffff888100003000;
constexpr std::uint64_t kFilpAgain = 0xffff888100004000;  // filp destroyed and made again: same name
constexpr std::uint64_t kUnnamed = 0xffff888100009000;
constexpr std::uint64_t kUnnamedToo = 0xffff888100008000;

// The kernel's gfp flags as callers pass them.
constexpr std::uint32_t kGfpKernel = 0xcc0;
constexpr std::uint32_t kGfpKernelAccount = kGfpKernel | 0x400000;

constexpr std::uint64_t kSecond = 1'000'000'000;

CacheNames cache_names() {
    CacheNames names;
    names[kFilp] = {"filp", 232, false};
    names[kInodeCache] = {"inode_cache", 600, true};
    names[kMapleNode] = {"maple_node", 256, false};
    names[kFilpAgain] = {"filp", 232, false};
    return names;
}

std::string kmalloc_name(std::uint32_t gfp, std::uint32_t bytes) {
    return cache_name(kmalloc_cache_key(gfp, bytes), {});
}

// --- cache keys and names -------------------------------------------------------------------

TEST(SlabCaches, KmallocSizesNameTheirCachesUpTo8k) {
    EXPECT_EQ(kmalloc_name(kGfpKernel, 8), "kmalloc-8");
    EXPECT_EQ(kmalloc_name(kGfpKernel, 16), "kmalloc-16");
    EXPECT_EQ(kmalloc_name(kGfpKernel, 96), "kmalloc-96");
    EXPECT_EQ(kmalloc_name(kGfpKernel, 192), "kmalloc-192");
    EXPECT_EQ(kmalloc_name(kGfpKernel, 512), "kmalloc-512");
    // From 1 KiB on the kernel names them in k.
    EXPECT_EQ(kmalloc_name(kGfpKernel, 1024), "kmalloc-1k");
    EXPECT_EQ(kmalloc_name(kGfpKernel, 2048), "kmalloc-2k");
    EXPECT_EQ(kmalloc_name(kGfpKernel, 4096), "kmalloc-4k");
    EXPECT_EQ(kmalloc_name(kGfpKernel, 8192), "kmalloc-8k");
    // Above KMALLOC_MAX_CACHE_SIZE: the page allocator.
    static_assert(kKmallocMaxCacheSize == 8192);
    EXPECT_EQ(kmalloc_name(kGfpKernel, 8193), "kmalloc-large");
    EXPECT_EQ(kmalloc_name(kGfpKernel, 16384), "kmalloc-large");
    EXPECT_EQ(kmalloc_name(kGfpKernel, 4u << 20), "kmalloc-large");
    EXPECT_EQ(kmalloc_name(0, 0xffffffff), "kmalloc-large");
}

TEST(SlabCaches, TheTypeFollowsTheGfpFlagsAsKmallocTypeReadsThem) {
    EXPECT_EQ(kmalloc_name(kGfpKernelAccount, 96), "kmalloc-cg-96");
    EXPECT_EQ(kmalloc_name(kGfpKernelAccount, 1024), "kmalloc-cg-1k");
    EXPECT_EQ(kmalloc_name(kGfpKernel | kGfpReclaimable, 96), "kmalloc-rcl-96");
    EXPECT_EQ(kmalloc_name(kGfpKernel | kGfpReclaimable, 8192), "kmalloc-rcl-8k");
    EXPECT_EQ(kmalloc_name(kGfpDma, 8), "dma-kmalloc-8");
    EXPECT_EQ(kmalloc_name(kGfpKernel | kGfpDma, 8192), "dma-kmalloc-8k");
    // DMA beats RECLAIMABLE beats ACCOUNT.
    EXPECT_EQ(kmalloc_name(kGfpDma | kGfpReclaimable | kGfpAccount, 192), "dma-kmalloc-192");
    EXPECT_EQ(kmalloc_name(kGfpDma | kGfpAccount, 192), "dma-kmalloc-192");
    EXPECT_EQ(kmalloc_name(kGfpReclaimable | kGfpAccount, 192), "kmalloc-rcl-192");
    // Large allocations have no type.
    EXPECT_EQ(kmalloc_name(kGfpDma | kGfpReclaimable | kGfpAccount, 8193), "kmalloc-large");
    // Other bits change nothing: __GFP_HIGHMEM, __GFP_ZERO, __GFP_NOWARN...
    EXPECT_EQ(kmalloc_name(0x2 | 0x100 | 0x2000, 64), "kmalloc-64");
}

TEST(SlabCaches, TheGfpBitsAreTheKernels) {
    EXPECT_EQ(kGfpDma, 0x01u);
    EXPECT_EQ(kGfpReclaimable, 0x10u);
    EXPECT_EQ(kGfpAccount, 0x400000u);
    // kmem_cache_alloc records mark reclaimable caches with the same bit.
    EXPECT_EQ(kGfpReclaimable, std::uint32_t{KLEAK_GFP_RECLAIMABLE});
}

TEST(SlabCaches, KmallocKeysAreSmallDistinctAndNeverAKernelAddress) {
    const std::vector<std::uint64_t> keys = {
        kmalloc_cache_key(0, 96),          kmalloc_cache_key(kGfpAccount, 96), kmalloc_cache_key(kGfpReclaimable, 96),
        kmalloc_cache_key(kGfpDma, 96),    kmalloc_cache_key(0, 192),          kmalloc_cache_key(0, 8192),
        kmalloc_cache_key(0, 8193),
    };
    for (std::size_t i = 0; i < keys.size(); ++i) {
        EXPECT_TRUE(is_kmalloc_cache_key(keys[i])) << i;
        EXPECT_LT(keys[i], std::uint64_t{1} << 32) << i;
        for (std::size_t j = i + 1; j < keys.size(); ++j) EXPECT_NE(keys[i], keys[j]) << i << " " << j;
    }
    // One key for every large allocation, whatever its size and flags.
    EXPECT_EQ(kmalloc_cache_key(0, 8193), kmalloc_cache_key(kGfpDma | kGfpAccount, 1u << 20));
    // Flags that do not choose a type do not split a cache.
    EXPECT_EQ(kmalloc_cache_key(kGfpKernel, 64), kmalloc_cache_key(0, 64));
    EXPECT_FALSE(is_kmalloc_cache_key(0));
    EXPECT_FALSE(is_kmalloc_cache_key(kFilp));
    EXPECT_FALSE(is_kmalloc_cache_key(std::uint64_t{1} << 32));
}

TEST(SlabCaches, KernelAddressesAreNamedFromCacheNamesOrShownInHex) {
    const CacheNames names = cache_names();
    EXPECT_EQ(cache_name(kFilp, names), "filp");
    EXPECT_EQ(cache_name(kInodeCache, names), "inode_cache");
    EXPECT_EQ(cache_name(kUnnamed, names), "0xffff888100009000");
    EXPECT_EQ(cache_name(kFilp, {}), "0xffff888100001000");
    EXPECT_EQ(cache_name(0xffffffffffffffff, names), "0xffffffffffffffff");
    // 0: a kmem_cache_alloc record of a kernel before 6.1, which does not say.
    EXPECT_EQ(cache_name(0, names), "");
}

TEST(SlabCaches, ReclaimableCaches) {
    const CacheNames names = cache_names();
    EXPECT_TRUE(cache_reclaimable(kmalloc_cache_key(kGfpReclaimable, 96), names));
    EXPECT_TRUE(cache_reclaimable(kmalloc_cache_key(kGfpReclaimable | kGfpAccount, 96), names));
    EXPECT_FALSE(cache_reclaimable(kmalloc_cache_key(0, 96), names));
    EXPECT_FALSE(cache_reclaimable(kmalloc_cache_key(kGfpAccount, 96), names));
    EXPECT_FALSE(cache_reclaimable(kmalloc_cache_key(kGfpDma | kGfpReclaimable, 96), names));
    EXPECT_FALSE(cache_reclaimable(kmalloc_cache_key(kGfpReclaimable, 8193), names));
    EXPECT_TRUE(cache_reclaimable(kInodeCache, names));
    EXPECT_FALSE(cache_reclaimable(kFilp, names));
    EXPECT_FALSE(cache_reclaimable(kUnnamed, names));
    EXPECT_FALSE(cache_reclaimable(0, names));
}

// --- a tracker fed with allocations and frees -------------------------------------------------

constexpr std::uint64_t kFreeSite = 0xffffffff81f00000;

struct Feed {
    Tracker tracker;
    std::uint64_t ts = 1000;
    std::uint64_t next_ptr = 0xffff888200000000;

    std::vector<std::uint64_t> kmalloc(std::uint64_t site, std::uint32_t bytes, std::uint32_t gfp, int n) {
        std::vector<std::uint64_t> ptrs;
        for (int i = 0; i < n; ++i) {
            ptrs.push_back(next_ptr += 0x2000);
            tracker.apply(alloc_event({.ts = ts++, .ptr = ptrs.back(), .site = site, .req = bytes, .alloc = bytes,
                                       .kind = EventKind::kmalloc, .gfp = gfp}));
        }
        return ptrs;
    }
    std::vector<std::uint64_t> from_cache(std::uint64_t site, std::uint64_t cache, std::uint32_t bytes, int n) {
        std::vector<std::uint64_t> ptrs;
        for (int i = 0; i < n; ++i) {
            ptrs.push_back(next_ptr += 0x2000);
            tracker.apply(alloc_event({.ts = ts++, .ptr = ptrs.back(), .site = site, .req = bytes, .alloc = bytes,
                                       .kind = EventKind::cache_alloc, .cache = cache}));
        }
        return ptrs;
    }
    void free(std::uint64_t ptr, EventKind kind = EventKind::kfree) {
        tracker.apply(free_event({.ts = ts++, .ptr = ptr, .site = kFreeSite, .kind = kind}));
    }
    void free(const std::vector<std::uint64_t>& ptrs) {
        for (const std::uint64_t p : ptrs) free(p);
    }
};

// for_each_class as (call site, bytes, cache key, live) in class order.
using ClassView = std::tuple<std::uint64_t, std::uint32_t, std::uint64_t, std::uint64_t>;
std::vector<ClassView> classes_of(const Tracker& tracker) {
    std::vector<ClassView> out;
    tracker.for_each_class([&](const AllocationClass& c, std::uint64_t key, std::uint64_t live) {
        out.emplace_back(tracker.sites()[c.site].call_site, c.bytes_alloc, key, live);
    });
    return out;
}

constexpr std::uint64_t kSiteA = 0xffffffff81000a00, kSiteB = 0xffffffff81000b00, kSiteC = 0xffffffff81000c00,
                        kSiteD = 0xffffffff81000d00, kSiteE = 0xffffffff81000e00, kSiteF = 0xffffffff81000f00,
                        kSiteG = 0xffffffff81001000, kSiteH = 0xffffffff81001100, kSiteI = 0xffffffff81001200,
                        kSiteJ = 0xffffffff81001300, kSiteK = 0xffffffff81001400;

// --- the tracker's live count per class -----------------------------------------------------------

TEST(TrackerClasses, LiveCountsFollowAllocationsAndFrees) {
    Feed f;
    const auto a64 = f.kmalloc(kSiteA, 64, kGfpKernelAccount, 3);
    const auto b = f.from_cache(kSiteB, kFilp, 256, 2);
    f.kmalloc(kSiteA, 128, kGfpKernel, 1);
    f.free(a64[0]);
    f.free(b[1], EventKind::cache_free);
    EXPECT_EQ(classes_of(f.tracker), (std::vector<ClassView>{
                                         {kSiteA, 64, kmalloc_cache_key(kGfpKernelAccount, 64), 2},
                                         {kSiteB, 256, kFilp, 1},
                                         {kSiteA, 128, kmalloc_cache_key(kGfpKernel, 128), 1},
                                     }));
    // A free of a pointer never seen changes no class.
    f.free(0xffff8880dead0000);
    f.free(a64[1]);
    f.free(a64[2]);
    f.free(b[0]);
    // Classes stay, empty.
    EXPECT_EQ(classes_of(f.tracker), (std::vector<ClassView>{
                                         {kSiteA, 64, kmalloc_cache_key(kGfpKernelAccount, 64), 0},
                                         {kSiteB, 256, kFilp, 0},
                                         {kSiteA, 128, kmalloc_cache_key(kGfpKernel, 128), 1},
                                     }));
}

TEST(TrackerClasses, AClassKeepsTheCacheOfItsFirstAllocation) {
    Feed f;
    f.kmalloc(kSiteA, 64, kGfpKernel, 1);
    f.kmalloc(kSiteA, 64, kGfpKernelAccount, 1);  // kmalloc-cg-64: the same (site, size) class
    f.from_cache(kSiteB, kFilp, 256, 1);
    f.from_cache(kSiteB, kFilpAgain, 256, 1);
    f.from_cache(kSiteC, 0, 96, 2);  // a kernel before 6.1: no cache
    EXPECT_EQ(classes_of(f.tracker), (std::vector<ClassView>{
                                         {kSiteA, 64, kmalloc_cache_key(kGfpKernel, 64), 2},
                                         {kSiteB, 256, kFilp, 2},
                                         {kSiteC, 96, 0, 2},
                                     }));
}

TEST(TrackerClasses, ADisplacedEntryStaysLiveInItsClassUntilFreedLate) {
    // P1 allocated at A, then again at B before its free arrives; the late
    // free (window reaching back before B's allocation) frees A's.
    Tracker t;
    constexpr std::uint64_t kP1 = 0xffff888000010000;
    t.apply(alloc_event({.ts = 100, .ptr = kP1, .site = kSiteA, .req = 60, .alloc = 64}));
    t.apply(alloc_event({.ts = 200, .ptr = kP1, .site = kSiteB, .req = 200, .alloc = 256,
                         .kind = EventKind::cache_alloc, .cache = kFilp}));
    ASSERT_EQ(t.displaced_count(), 1u);
    EXPECT_EQ(classes_of(t), (std::vector<ClassView>{{kSiteA, 64, kmalloc_cache_key(0, 64), 1},
                                                     {kSiteB, 256, kFilp, 1}}));
    t.apply(free_event({.ts = 300, .ptr = kP1, .site = kFreeSite, .window = 250}));
    ASSERT_EQ(t.totals().reordered_frees, 1u);
    EXPECT_EQ(classes_of(t), (std::vector<ClassView>{{kSiteA, 64, kmalloc_cache_key(0, 64), 0},
                                                     {kSiteB, 256, kFilp, 1}}));
    t.apply(free_event({.ts = 400, .ptr = kP1, .site = kFreeSite, .kind = EventKind::cache_free}));
    EXPECT_EQ(classes_of(t), (std::vector<ClassView>{{kSiteA, 64, kmalloc_cache_key(0, 64), 0},
                                                     {kSiteB, 256, kFilp, 0}}));
}

TEST(TrackerClasses, ADisplacedEntryWhoseFreeNeverComesLeavesItsClassWhenReplaced) {
    Tracker t;
    constexpr std::uint64_t kP1 = 0xffff888000010000;
    t.apply(alloc_event({.ts = 100, .ptr = kP1, .site = kSiteA, .req = 60, .alloc = 64}));
    t.apply(alloc_event({.ts = 200, .ptr = kP1, .site = kSiteB, .req = 100, .alloc = 128}));
    // A free that cannot precede the reallocation frees B's.
    t.apply(free_event({.ts = 300, .ptr = kP1, .site = kFreeSite, .window = 100}));
    EXPECT_EQ(classes_of(t), (std::vector<ClassView>{{kSiteA, 64, kmalloc_cache_key(0, 64), 1},
                                                     {kSiteB, 128, kmalloc_cache_key(0, 128), 0}}));
    // A's waits a second of event time, then counts replaced.
    t.apply(alloc_event({.ts = 200 + Tracker::kDisplacedHorizonNs - 1, .ptr = 0xffff888000020000, .site = kSiteC,
                         .req = 8, .alloc = 8}));
    EXPECT_EQ(std::get<3>(classes_of(t)[0]), 1u);
    t.apply(alloc_event({.ts = 200 + Tracker::kDisplacedHorizonNs, .ptr = 0xffff888000030000, .site = kSiteC,
                         .req = 8, .alloc = 8}));
    EXPECT_EQ(site_of(t, kSiteA).replaced, 1u);
    EXPECT_EQ(classes_of(t), (std::vector<ClassView>{{kSiteA, 64, kmalloc_cache_key(0, 64), 0},
                                                     {kSiteB, 128, kmalloc_cache_key(0, 128), 0},
                                                     {kSiteC, 8, kmalloc_cache_key(0, 8), 2}}));

    // settle() does the same to whatever is displaced at the end.
    Tracker s;
    s.apply(alloc_event({.ts = 100, .ptr = kP1, .site = kSiteA, .req = 60, .alloc = 64}));
    s.apply(alloc_event({.ts = 200, .ptr = kP1, .site = kSiteA, .req = 60, .alloc = 64}));
    EXPECT_EQ(classes_of(s), (std::vector<ClassView>{{kSiteA, 64, kmalloc_cache_key(0, 64), 2}}));
    s.settle();
    EXPECT_EQ(classes_of(s), (std::vector<ClassView>{{kSiteA, 64, kmalloc_cache_key(0, 64), 1}}));
}

TEST(TrackerClasses, AllocationsBeyondTheClassLimitAreInNoClass) {
    Tracker t(2);
    t.apply(alloc_event({.ts = 1, .ptr = 0x1000, .site = kSiteA, .req = 64, .alloc = 64}));
    t.apply(alloc_event({.ts = 2, .ptr = 0x2000, .site = kSiteB, .req = 64, .alloc = 64}));
    t.apply(alloc_event({.ts = 3, .ptr = 0x3000, .site = kSiteC, .req = 64, .alloc = 64,
                         .kind = EventKind::cache_alloc, .cache = kUnnamed}));
    ASSERT_EQ(t.class_overflows(), 1u);
    EXPECT_EQ(classes_of(t), (std::vector<ClassView>{{kSiteA, 64, kmalloc_cache_key(0, 64), 1},
                                                     {kSiteB, 64, kmalloc_cache_key(0, 64), 1}}));
    // Its cache is met by no class either.
    EXPECT_TRUE(unnamed_caches(t, {}).empty());
    t.apply(free_event({.ts = 4, .ptr = 0x3000, .site = kFreeSite}));
    t.apply(free_event({.ts = 5, .ptr = 0x1000, .site = kFreeSite}));
    EXPECT_EQ(classes_of(t), (std::vector<ClassView>{{kSiteA, 64, kmalloc_cache_key(0, 64), 0},
                                                     {kSiteB, 64, kmalloc_cache_key(0, 64), 1}}));
}

TEST(TrackerClasses, ResetForgetsClassesAndTheirCounts) {
    Feed f;
    f.kmalloc(kSiteA, 64, 0, 3);
    f.from_cache(kSiteB, kFilp, 256, 2);
    f.tracker.reset();
    EXPECT_TRUE(classes_of(f.tracker).empty());
    f.from_cache(kSiteB, kFilp, 256, 1);
    EXPECT_EQ(classes_of(f.tracker), (std::vector<ClassView>{{kSiteB, 256, kFilp, 1}}));
}

TEST(TrackerClasses, PerClassLiveAddsUpToEachSitesOutstandingOnARandomStream) {
    // Churn on a few pointers, so that pointers come back while still live
    // (displaced), some frees sort late and claim displaced entries, others
    // never come (replaced), and some free what was never seen.
    test::Prng rng(20240611);
    Tracker t;
    std::uint64_t ts = 1'000'000;
    const std::uint64_t sites[] = {kSiteA, kSiteB, kSiteC, kSiteD, kSiteE};
    const std::uint64_t caches[] = {0, kFilp, kInodeCache};
    const auto check = [&](const char* when) {
        SCOPED_TRACE(when);
        std::map<std::uint64_t, std::uint64_t> live_by_site;
        std::uint64_t all = 0;
        t.for_each_class([&](const AllocationClass& c, std::uint64_t, std::uint64_t live) {
            live_by_site[t.sites()[c.site].call_site] += live;
            all += live;
        });
        for (const SiteStats& s : t.sites())
            EXPECT_EQ(live_by_site[s.call_site], s.outstanding) << std::hex << s.call_site;
        EXPECT_EQ(all, t.totals().outstanding);
        EXPECT_EQ(all, t.outstanding_count());
    };
    for (int i = 0; i < 40'000; ++i) {
        ts += rng.between(1, 400'000);  // 40,000 events over ~8 s: displaced entries expire
        const std::uint64_t ptr = 0xffff888000000000 + rng.below(48) * 0x40;
        if (rng.percent(55)) {
            const std::uint32_t bytes = 8u << rng.below(5);
            const bool from_cache = rng.percent(40);
            t.apply(alloc_event({.ts = ts, .ptr = ptr, .site = sites[rng.below(5)], .req = bytes, .alloc = bytes,
                                 .kind = from_cache ? EventKind::cache_alloc : EventKind::kmalloc,
                                 .gfp = rng.percent(30) ? kGfpKernelAccount : kGfpKernel,
                                 .cache = from_cache ? caches[rng.below(3)] : 0}));
        } else {
            const std::uint32_t window = rng.percent(30) ? static_cast<std::uint32_t>(rng.between(1, 3'000'000)) : 0;
            t.apply(free_event({.ts = ts, .ptr = ptr, .site = kFreeSite, .window = window}));
        }
        if (i % 5000 == 4999) check("mid-stream");
    }
    EXPECT_GT(t.totals().reordered_frees, 10u);
    EXPECT_GT(t.totals().replaced, 10u);
    EXPECT_GT(t.displaced_count(), 0u);
    check("at the end");
    t.settle();
    check("settled");
}

// --- /proc/slabinfo ------------------------------------------------------------------------------

// Lines of this machine's /proc/slabinfo (Linux 6.18, SLUB), headers included.
constexpr std::string_view kSlabinfo =
    "slabinfo - version: 2.1\n"
    "# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> "
    "<batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>\n"
    "filp                1092   1092    192   21    1 : tunables    0    0    0 : slabdata     52     52      0\n"
    "inode_cache         1919   1937    624   13    2 : tunables    0    0    0 : slabdata    149    149      0\n"
    "maple_node           815   1312    256   16    1 : tunables    0    0    0 : slabdata     82     82      0\n"
    "kmalloc-cg-1k        168    272   1024   16    4 : tunables    0    0    0 : slabdata     17     17      0\n"
    "kmalloc-cg-192       357    462    192   21    1 : tunables    0    0    0 : slabdata     22     22      0\n"
    "dma-kmalloc-8k         0      0   8192    4    8 : tunables    0    0    0 : slabdata      0      0      0\n"
    "kmalloc-rcl-96     15087  15372     96   42    1 : tunables    0    0    0 : slabdata    366    366      0\n"
    "kmalloc-8k            43     52   8192    4    8 : tunables    0    0    0 : slabdata     13     13      0\n"
    "kmalloc-8           2445   2560      8  512    1 : tunables    0    0    0 : slabdata      5      5      0\n"
    "kmalloc-192         9071  10332    192   21    1 : tunables    0    0    0 : slabdata    492    492      0\n";

using SlabView = std::tuple<std::string, std::uint64_t, std::uint64_t, std::uint32_t>;
std::vector<SlabView> slab_view(const std::vector<SlabinfoRow>& rows) {
    std::vector<SlabView> out;
    for (const SlabinfoRow& r : rows) out.emplace_back(r.name, r.active_objs, r.num_objs, r.objsize);
    return out;
}

TEST(Slabinfo, ParsesTheKernelsText) {
    const SlabinfoParse p = parse_slabinfo(kSlabinfo);
    EXPECT_EQ(p.error, "");
    EXPECT_EQ(slab_view(p.rows), (std::vector<SlabView>{
                                     {"filp", 1092, 1092, 192},
                                     {"inode_cache", 1919, 1937, 624},
                                     {"maple_node", 815, 1312, 256},
                                     {"kmalloc-cg-1k", 168, 272, 1024},
                                     {"kmalloc-cg-192", 357, 462, 192},
                                     {"dma-kmalloc-8k", 0, 0, 8192},
                                     {"kmalloc-rcl-96", 15087, 15372, 96},
                                     {"kmalloc-8k", 43, 52, 8192},
                                     {"kmalloc-8", 2445, 2560, 8},
                                     {"kmalloc-192", 9071, 10332, 192},
                                 }));
}

TEST(Slabinfo, TabsBlankLinesAndNoFinalNewline) {
    const SlabinfoParse p =
        parse_slabinfo("slabinfo - version: 2.1\n\n#\tname\nfilp\t7\t9\t192 21 1\n\nbio-312 2 12 320");
    EXPECT_EQ(p.error, "");
    EXPECT_EQ(slab_view(p.rows), (std::vector<SlabView>{{"filp", 7, 9, 192}, {"bio-312", 2, 12, 320}}));
}

TEST(Slabinfo, HeadersAloneHoldNoRows) {
    const SlabinfoParse p = parse_slabinfo(kSlabinfo.substr(0, kSlabinfo.find("filp")));
    EXPECT_EQ(p.error, "");
    EXPECT_TRUE(p.rows.empty());
}

TEST(Slabinfo, AnotherHeaderIsRefusedWholesale) {
    std::string v1(kSlabinfo);
    v1.replace(0, std::string_view("slabinfo - version: 2.1").size(), "slabinfo - version: 1.1");
    SlabinfoParse p = parse_slabinfo(v1);
    EXPECT_EQ(p.error, "not /proc/slabinfo version 2.x: 'slabinfo - version: 1.1'");
    EXPECT_TRUE(p.rows.empty());
    // No header at all: the first row is not one.
    p = parse_slabinfo(kSlabinfo.substr(kSlabinfo.find("filp")));
    EXPECT_EQ(p.error, "not /proc/slabinfo version 2.x: 'filp                1092   1092    192  '");
    EXPECT_TRUE(p.rows.empty());
    EXPECT_EQ(parse_slabinfo("<html>\n").error, "not /proc/slabinfo version 2.x: '<html>'");
}

TEST(Slabinfo, AMalformedLineIsNamedAndTheOthersKept) {
    std::string text = "slabinfo - version: 2.1\n# name ...\nfilp 1092 1092 192 21 1\n";
    text += "broken 12x 14 64 1 1\n";  // line 4
    text += "inode_cache 1919 1937 624 13 2\n";
    SlabinfoParse p = parse_slabinfo(text);
    EXPECT_EQ(p.error, "line 4 of /proc/slabinfo does not parse");
    EXPECT_EQ(slab_view(p.rows), (std::vector<SlabView>{{"filp", 1092, 1092, 192}, {"inode_cache", 1919, 1937, 624}}));

    for (const std::string_view bad : {"short 1 2", "neg -1 2 64", "big 1 2 4294967296", "frac 1.5 2 64",
                                       "huge 18446744073709551616 2 64"}) {
        SCOPED_TRACE(bad);
        p = parse_slabinfo("slabinfo - version: 2.1\n" + std::string(bad) + "\nfilp 1 2 192\n");
        EXPECT_EQ(p.error, "line 2 of /proc/slabinfo does not parse");
        EXPECT_EQ(slab_view(p.rows), (std::vector<SlabView>{{"filp", 1, 2, 192}}));
    }
    // The largest objsize that fits.
    p = parse_slabinfo("slabinfo - version: 2.1\nbig 1 2 4294967295\n");
    EXPECT_EQ(p.error, "");
    EXPECT_EQ(slab_view(p.rows), (std::vector<SlabView>{{"big", 1, 2, 4294967295u}}));
}

// --- reconciliation ---------------------------------------------------------------------------------

using RowView = std::tuple<std::string, std::uint64_t, std::uint64_t, std::optional<std::uint64_t>,
                           std::optional<std::uint64_t>, std::uint64_t, bool, std::size_t>;
std::vector<RowView> row_view(const Reconciliation& r) {
    std::vector<RowView> out;
    for (const CacheRow& c : r.caches)
        out.emplace_back(c.name, c.live, c.live_bytes, c.kernel_active, c.kernel_total, c.excess, c.reclaimable,
                         c.sites);
    return out;
}

std::vector<SlabinfoRow> kernel_rows() { return parse_slabinfo(kSlabinfo).rows; }

// Every way an allocation names its cache, and some that name none.
Feed mixed_feed() {
    Feed f;
    f.kmalloc(kSiteA, 192, kGfpKernelAccount, 3);                    // kmalloc-cg-192
    f.kmalloc(kSiteB, 192, kGfpKernel, 2);                           // kmalloc-192
    const auto filps = f.from_cache(kSiteC, kFilp, 192, 5);          // filp
    f.free(filps[2]);
    f.from_cache(kSiteD, kFilpAgain, 192, 1);                        // filp, another address
    f.from_cache(kSiteE, kInodeCache, 624, 2);                       // inode_cache, reclaimable
    f.kmalloc(kSiteF, 16384, kGfpKernel, 1);                         // kmalloc-large, in no slab
    f.kmalloc(kSiteF, 32768, kGfpKernelAccount, 1);
    f.free(f.kmalloc(kSiteG, 64, kGfpKernel, 3));                    // all freed: no row
    f.from_cache(kSiteH, 0, 96, 2);                                  // a cache not said: no row
    f.from_cache(kSiteI, kUnnamed, 128, 1);                          // not named (yet)
    f.kmalloc(kSiteJ, 96, kGfpKernel | kGfpReclaimable, 1);          // kmalloc-rcl-96
    f.kmalloc(kSiteK, 8192, kGfpKernel | kGfpDma, 1);                // dma-kmalloc-8k: 0 active in the kernel
    return f;
}

TEST(ReconcileCaches, OneRowPerCacheWithTheKernelsCountsJoinedByName) {
    const Feed f = mixed_feed();
    const Reconciliation r = reconcile_caches(f.tracker, cache_names(), kernel_rows());
    EXPECT_TRUE(r.slabinfo);
    using std::nullopt;
    EXPECT_EQ(row_view(r), (std::vector<RowView>{
                               {"filp", 5, 960, 1092, 1092, 0, false, 2},
                               {"kmalloc-cg-192", 3, 576, 357, 462, 0, false, 1},
                               // equal live: by name
                               {"inode_cache", 2, 1248, 1919, 1937, 0, true, 1},
                               {"kmalloc-192", 2, 384, 9071, 10332, 0, false, 1},
                               {"kmalloc-large", 2, 49152, nullopt, nullopt, 0, false, 1},
                               {"0xffff888100009000", 1, 128, nullopt, nullopt, 0, false, 1},
                               {"dma-kmalloc-8k", 1, 8192, 0, 0, 0, false, 1},
                               {"kmalloc-rcl-96", 1, 96, 15087, 15372, 0, true, 1},
                           }));
    // A share for every site (the freeing one too), none short.
    ASSERT_EQ(r.sites.size(), f.tracker.sites().size());
    for (const auto& share : r.sites) EXPECT_FALSE(share);
}

TEST(ReconcileCaches, WithoutSlabinfoKleakdsSideOnly) {
    const Feed f = mixed_feed();
    const Reconciliation r = reconcile_caches(f.tracker, cache_names(), {});
    EXPECT_FALSE(r.slabinfo);
    ASSERT_EQ(r.caches.size(), 8u);
    for (const CacheRow& c : r.caches) {
        EXPECT_FALSE(c.kernel_active) << c.name;
        EXPECT_FALSE(c.kernel_total) << c.name;
        EXPECT_EQ(c.excess, 0u) << c.name;
    }
    EXPECT_EQ(r.caches[0].name, "filp");
    EXPECT_EQ(r.sites.size(), f.tracker.sites().size());
}

TEST(ReconcileCaches, NamesLearnedLaterJoinTheirRows) {
    Feed f = mixed_feed();
    CacheNames names = cache_names();
    names[kUnnamed] = {"kmalloc-cg-192", 192, false};  // a kmem_cache that is a kmalloc cache
    const Reconciliation r = reconcile_caches(f.tracker, names, kernel_rows());
    ASSERT_GE(r.caches.size(), 2u);
    EXPECT_EQ(row_view(r)[1], (RowView{"kmalloc-cg-192", 4, 704, 357, 462, 0, false, 2}));
    EXPECT_EQ(r.caches.size(), 7u);
}

// One site allocating `live` objects from the maple_node cache.
Feed maple_feed(int live) {
    Feed f;
    f.from_cache(kSiteA, kMapleNode, 256, live);
    return f;
}

std::vector<SlabinfoRow> maple_active(std::uint64_t active) { return {{"maple_node", active, active + 100, 256}}; }

std::uint64_t maple_excess(const Feed& f, std::uint64_t active, const ReconcileRules& rules = {}) {
    const Reconciliation r = reconcile_caches(f.tracker, cache_names(), maple_active(active), rules);
    EXPECT_EQ(r.caches.size(), 1u);
    return r.caches.empty() ? 0 : r.caches[0].excess;
}

TEST(ReconcileCaches, AnExcessCountsFromThirtyTwoObjects) {
    // 1,000 live: the floor is max(32, 2 % of 1,000 = 20) = 32.
    const Feed f = maple_feed(1000);
    EXPECT_EQ(maple_excess(f, 969), 0u);  // 31 more than the kernel's
    EXPECT_EQ(maple_excess(f, 968), 32u);
    EXPECT_EQ(maple_excess(f, 500), 500u);
    EXPECT_EQ(maple_excess(f, 0), 1000u);
    EXPECT_EQ(maple_excess(f, 1000), 0u);
    EXPECT_EQ(maple_excess(f, 5000), 0u);  // the kernel's count is never below the truth: no excess
}

TEST(ReconcileCaches, AnExcessCountsFromTwoPercentOfLive) {
    // 5,000 live: the floor is max(32, 100) = 100.
    const Feed f = maple_feed(5000);
    EXPECT_EQ(maple_excess(f, 4901), 0u);
    EXPECT_EQ(maple_excess(f, 4900), 100u);
    // 20 live can never be 32 more than the kernel's.
    EXPECT_EQ(maple_excess(maple_feed(20), 0), 0u);
    EXPECT_EQ(maple_excess(maple_feed(32), 0), 32u);
}

TEST(ReconcileCaches, TheFloorFollowsTheRules) {
    const Feed f = maple_feed(1000);
    const ReconcileRules half{.min_excess = 1, .min_excess_share = 0.5};
    EXPECT_EQ(maple_excess(f, 501, half), 0u);
    EXPECT_EQ(maple_excess(f, 500, half), 500u);
    const ReconcileRules any{.min_excess = 1, .min_excess_share = 0};
    EXPECT_EQ(maple_excess(f, 999, any), 1u);
    EXPECT_EQ(maple_excess(f, 1000, any), 0u);
}

// Sites S1..S5, the first four in maple_node (600, 300, 99 and 1 live), S5 in filp.
constexpr std::uint64_t kS1 = 0xffffffff82000100, kS2 = 0xffffffff82000200, kS3 = 0xffffffff82000300,
                        kS4 = 0xffffffff82000400, kS5 = 0xffffffff82000500;

Feed shares_feed() {
    Feed f;
    f.from_cache(kS1, kMapleNode, 256, 600);
    f.free(f.from_cache(kS2, kMapleNode, 256, 50));  // freed ones are no part of it
    f.from_cache(kS2, kMapleNode, 256, 300);
    f.from_cache(kS3, kMapleNode, 256, 99);
    f.from_cache(kS4, kMapleNode, 256, 1);
    f.from_cache(kS5, kFilp, 192, 10);
    return f;
}

using ShareView = std::tuple<std::string, std::uint64_t, std::uint64_t, std::uint64_t>;
std::map<std::uint64_t, std::optional<ShareView>> shares_by_site(const Tracker& t, const Reconciliation& r) {
    std::map<std::uint64_t, std::optional<ShareView>> out;
    EXPECT_EQ(r.sites.size(), t.sites().size());
    for (SiteId id = 0; id < r.sites.size() && id < t.sites().size(); ++id) {
        const auto& s = r.sites[id];
        out[t.sites()[id].call_site] = s ? std::optional<ShareView>(ShareView{s->cache, s->estimate, s->cache_live,
                                                                              s->kernel_active})
                                         : std::nullopt;
    }
    return out;
}

TEST(ReconcileCaches, EachSiteGetsItsShareOfTheExcessInProportion) {
    const Feed f = shares_feed();
    // 1,000 live in maple_node, 600 active in the kernel: 400 freed unseen.
    std::vector<SlabinfoRow> rows = kernel_rows();
    for (SlabinfoRow& row : rows)
        if (row.name == "maple_node") row.active_objs = 600;
    const Reconciliation r = reconcile_caches(f.tracker, cache_names(), rows);
    ASSERT_EQ(r.caches.size(), 2u);
    EXPECT_EQ(row_view(r)[0], (RowView{"maple_node", 1000, 256000, 600, 1312, 400, false, 4}));
    EXPECT_EQ(row_view(r)[1], (RowView{"filp", 10, 1920, 1092, 1092, 0, false, 1}));
    EXPECT_EQ(shares_by_site(f.tracker, r), (std::map<std::uint64_t, std::optional<ShareView>>{
                                                {kS1, ShareView{"maple_node", 240, 1000, 600}},
                                                {kS2, ShareView{"maple_node", 120, 1000, 600}},
                                                {kS3, ShareView{"maple_node", 40, 1000, 600}},  // 39.6
                                                {kS4, std::nullopt},  // 0.4: rounds to none
                                                {kS5, std::nullopt},  // filp has no excess
                                                {kFreeSite, std::nullopt},
                                            }));
}

TEST(ReconcileCaches, ASharesEstimateIsAtMostTheSitesOutstanding) {
    // The kernel says none is active: every live object was freed unseen.
    const Feed f = shares_feed();
    const Reconciliation r = reconcile_caches(f.tracker, cache_names(), maple_active(0));
    EXPECT_EQ(shares_by_site(f.tracker, r), (std::map<std::uint64_t, std::optional<ShareView>>{
                                                {kS1, ShareView{"maple_node", 600, 1000, 0}},
                                                {kS2, ShareView{"maple_node", 300, 1000, 0}},
                                                {kS3, ShareView{"maple_node", 99, 1000, 0}},
                                                {kS4, ShareView{"maple_node", 1, 1000, 0}},
                                                {kS5, std::nullopt},
                                                {kFreeSite, std::nullopt},
                                            }));
    for (SiteId id = 0; id < r.sites.size(); ++id)
        if (r.sites[id]) EXPECT_EQ(r.sites[id]->estimate, f.tracker.sites()[id].outstanding);
}

TEST(ReconcileCaches, ASiteInTwoShortCachesNamesTheOneHoldingMostOfItsObjects) {
    // S1 holds 90 maple nodes (of the cache's 1,000, 500 active in the
    // kernel: excess 500) and 10 kmalloc-192 objects (of 5,000, 4,000
    // active: excess 1,000). Its share is 45 + 2; most of its objects are
    // maple nodes (cache_reconciliation.cpp: "names the one it holds most of").
    Feed f;
    f.from_cache(kS1, kMapleNode, 256, 90);
    f.kmalloc(kS1, 192, kGfpKernel, 10);
    f.from_cache(kS2, kMapleNode, 256, 910);
    f.kmalloc(kS3, 192, kGfpKernel, 4990);
    const std::vector<SlabinfoRow> rows = {{"maple_node", 500, 600, 256}, {"kmalloc-192", 4000, 4200, 192}};
    const Reconciliation r = reconcile_caches(f.tracker, cache_names(), rows);
    ASSERT_EQ(r.caches.size(), 2u);
    EXPECT_EQ(r.caches[0].excess, 1000u);
    EXPECT_EQ(r.caches[1].excess, 500u);
    const auto shares = shares_by_site(f.tracker, r);
    EXPECT_EQ(shares.at(kS1), (ShareView{"maple_node", 47, 1000, 500}));
    EXPECT_EQ(shares.at(kS2), (ShareView{"maple_node", 455, 1000, 500}));
    EXPECT_EQ(shares.at(kS3), (ShareView{"kmalloc caches of size 192", 998, 5000, 4000}));
}

TEST(ReconcileCaches, TwoAddressesOfOneNameAreOneCacheToTheKernel) {
    Feed f;
    f.from_cache(kS1, kFilp, 192, 600);
    f.from_cache(kS2, kFilpAgain, 192, 400);
    const std::vector<SlabinfoRow> rows = {{"filp", 700, 800, 192}};
    const Reconciliation r = reconcile_caches(f.tracker, cache_names(), rows);
    EXPECT_EQ(row_view(r), (std::vector<RowView>{{"filp", 1000, 192000, 700, 800, 300, false, 2}}));
    const auto shares = shares_by_site(f.tracker, r);
    EXPECT_EQ(shares.at(kS1), (ShareView{"filp", 180, 1000, 700}));
    EXPECT_EQ(shares.at(kS2), (ShareView{"filp", 120, 1000, 700}));
}

// --- each site's main cache, and the caches still to name -------------------------------------------

TEST(SiteCacheNames, EachSitesCacheHoldingMostOfItsLiveObjects) {
    Feed f;
    f.kmalloc(kSiteA, 64, kGfpKernelAccount, 3);
    f.from_cache(kSiteA, kFilp, 192, 5);
    f.free(f.kmalloc(kSiteB, 64, kGfpKernel, 2));  // none live: its first class's
    const auto b128 = f.kmalloc(kSiteB, 128, kGfpKernel, 1);
    f.free(f.kmalloc(kSiteB, 128, kGfpKernel, 1));
    f.from_cache(kSiteC, 0, 96, 1);
    f.from_cache(kSiteD, kUnnamed, 128, 1);
    f.from_cache(kSiteE, kInodeCache, 624, 1);
    f.kmalloc(kSiteE, 8, kGfpKernel, 4);
    std::vector<std::string> names = site_cache_names(f.tracker, cache_names());
    ASSERT_EQ(names.size(), f.tracker.sites().size());
    std::map<std::uint64_t, std::string> by_site;
    for (SiteId id = 0; id < names.size(); ++id) by_site[f.tracker.sites()[id].call_site] = names[id];
    EXPECT_EQ(by_site, (std::map<std::uint64_t, std::string>{
                           {kSiteA, "filp"},
                           {kSiteB, "kmalloc-128"},  // 1 live there, 0 in kmalloc-64
                           {kSiteC, ""},
                           {kSiteD, "0xffff888100009000"},
                           {kSiteE, "kmalloc-8"},
                           {kFreeSite, ""},  // frees only
                       }));
    // Once all of kSiteB's are freed: its first class's cache.
    f.free(b128);
    names = site_cache_names(f.tracker, cache_names());
    for (SiteId id = 0; id < names.size(); ++id)
        if (f.tracker.sites()[id].call_site == kSiteB) EXPECT_EQ(names[id], "kmalloc-64");
}

TEST(SiteCacheNames, AllocationsOfSeveralSizesInOneCacheCountTogether) {
    // kmalloc-large is one cache for every size above 8 KiB: 3 + 3 live
    // there outnumber the site's 5 in kmalloc-64.
    Feed f;
    f.kmalloc(kSiteA, 64, kGfpKernel, 5);
    f.kmalloc(kSiteA, 16384, kGfpKernel, 3);
    f.kmalloc(kSiteA, 32768, kGfpKernel, 3);
    const std::vector<std::string> names = site_cache_names(f.tracker, {});
    ASSERT_EQ(names.size(), 1u);
    EXPECT_EQ(names[0], "kmalloc-large");
}

TEST(UnnamedCaches, OnlyKernelAddressesMissingFromTheNames) {
    Feed f;
    f.from_cache(kSiteA, kUnnamed, 128, 2);
    f.from_cache(kSiteB, kUnnamed, 128, 1);
    f.free(f.from_cache(kSiteC, kUnnamedToo, 64, 1));  // met, though none is live
    f.from_cache(kSiteD, kFilp, 192, 1);
    f.from_cache(kSiteE, 0, 96, 1);
    f.kmalloc(kSiteF, 64, kGfpKernelAccount, 1);
    f.kmalloc(kSiteF, 16384, kGfpKernel, 1);
    EXPECT_EQ(unnamed_caches(f.tracker, cache_names()), (std::vector<std::uint64_t>{kUnnamedToo, kUnnamed}));
    EXPECT_EQ(unnamed_caches(f.tracker, {}), (std::vector<std::uint64_t>{kFilp, kUnnamedToo, kUnnamed}));
    CacheNames all = cache_names();
    all[kUnnamed] = {"kmalloc-cg-128", 128, false};
    all[kUnnamedToo] = {"pid", 64, false};
    EXPECT_TRUE(unnamed_caches(f.tracker, all).empty());
}

// --- the `caches` result ---------------------------------------------------------------------------------

TEST(CachesJson, RowsCoverageAndCounts) {
    const Feed f = mixed_feed();
    const Reconciliation r = reconcile_caches(f.tracker, cache_names(), kernel_rows());
    const json all = caches_to_json(r, 0);
    EXPECT_EQ(all.at("slabinfo"), true);
    EXPECT_EQ(all.at("caches_total"), 8);
    EXPECT_EQ(all.at("caches_with_excess"), 0);
    ASSERT_EQ(all.at("caches").size(), 8u);
    EXPECT_EQ(all.at("caches").at(0), (json{{"cache", "filp"},
                                             {"live", 5},
                                             {"live_bytes", 960},
                                             {"kernel_active", 1092},
                                             {"kernel_total", 1092},
                                             {"coverage", 5.0 / 1092.0},
                                             {"excess", 0},
                                             {"reclaimable", false},
                                             {"sites", 2}}));
    // Not in /proc/slabinfo: nulls.
    EXPECT_EQ(all.at("caches").at(4), (json{{"cache", "kmalloc-large"},
                                             {"live", 2},
                                             {"live_bytes", 49152},
                                             {"kernel_active", nullptr},
                                             {"kernel_total", nullptr},
                                             {"coverage", nullptr},
                                             {"excess", 0},
                                             {"reclaimable", false},
                                             {"sites", 1}}));
    // None active in its own cache: a kmalloc row's coverage is its size's,
    // every kmalloc-8k row of kleakd's against every 8k kmalloc cache's.
    const json& dma = all.at("caches").at(6);
    EXPECT_EQ(dma.at("cache"), "dma-kmalloc-8k");
    EXPECT_EQ(dma.at("kernel_active"), 0);
    ASSERT_TRUE(dma.contains("kernel_pool_active"));
    if (dma.at("kernel_pool_active").get<std::uint64_t>() == 0)
        EXPECT_TRUE(dma.at("coverage").is_null());
    else
        EXPECT_GT(dma.at("coverage").get<double>(), 0.0);
    EXPECT_EQ(all.at("caches").at(7).at("reclaimable"), true);

    // top cuts the rows, not the counts.
    const json two = caches_to_json(r, 2);
    ASSERT_EQ(two.at("caches").size(), 2u);
    EXPECT_EQ(two.at("caches").at(1).at("cache"), "kmalloc-cg-192");
    EXPECT_EQ(two.at("caches_total"), 8);
    EXPECT_EQ(caches_to_json(r, 100).at("caches").size(), 8u);

    EXPECT_EQ(caches_to_json(reconcile_caches(f.tracker, cache_names(), {}), 0).at("slabinfo"), false);
    EXPECT_EQ(caches_to_json(Reconciliation{}, 0),
              (json{{"slabinfo", false}, {"caches_total", 0}, {"caches_with_excess", 0}, {"caches", json::array()}}));
}

TEST(CachesJson, ACacheWithAnExcess) {
    const Feed f = shares_feed();
    const json j = caches_to_json(reconcile_caches(f.tracker, cache_names(), maple_active(600)), 0);
    EXPECT_EQ(j.at("caches_with_excess"), 1);
    EXPECT_EQ(j.at("caches").at(0), (json{{"cache", "maple_node"},
                                           {"live", 1000},
                                           {"live_bytes", 256000},
                                           {"kernel_active", 600},
                                           {"kernel_total", 700},
                                           {"coverage", 1000.0 / 600.0},
                                           {"excess", 400},
                                           {"reclaimable", false},
                                           {"sites", 4}}));
}

// --- the verdict -----------------------------------------------------------------------------------------

constexpr std::uint64_t kPeriod = 10 * kSecond;

std::vector<HistoryPoint> rising_history(std::uint64_t seconds) {
    std::vector<HistoryPoint> points;
    for (std::uint64_t t = 0; t <= seconds; t += 10)
        points.push_back({1000 * kSecond + t * kSecond, 100 + t, (100 + t) * 256});
    return points;
}

SiteStats outstanding_stats(std::uint64_t allocs, std::uint64_t outstanding, std::uint64_t replaced = 0) {
    SiteStats s;
    s.allocs = allocs;
    s.outstanding = outstanding;
    s.replaced = replaced;
    return s;
}

TEST(JudgeSite, AShareOfItsCachesExcessMakesASiteUntrackedFrees) {
    const UntrackedShare share{"maple_node", 40, 1000, 600};
    const std::vector<HistoryPoint> history = rising_history(600);
    const SiteStats stats = outstanding_stats(1000, 100);
    ASSERT_EQ(judge_site(history, stats, VerdictRules{}).verdict, Verdict::growing);
    const SiteJudgement j = judge_site(history, stats, VerdictRules{}, &share);
    EXPECT_EQ(j.verdict, Verdict::untracked_frees);
    EXPECT_EQ(j.untracked_estimate, 40u);
    EXPECT_EQ(j.reason,
              "its cache maple_node has 600 active objects in /proc/slabinfo, but kleakd counts 1000 live: frees "
              "escape the tracepoints, about 40 of its 100 outstanding");
    // Its trend is still measured.
    EXPECT_NEAR(j.growth_per_hour, 3600, 1);
}

TEST(JudgeSite, EvenAYoungSiteIsUntrackedFreesByItsCache) {
    const UntrackedShare share{"maple_node", 3, 1000, 600};
    const SiteJudgement j = judge_site({}, outstanding_stats(5, 5), VerdictRules{}, &share);
    EXPECT_EQ(j.verdict, Verdict::untracked_frees);
    EXPECT_EQ(j.untracked_estimate, 3u);
    EXPECT_NE(j.reason.find("its cache maple_node"), std::string::npos) << j.reason;
}

TEST(JudgeSite, NoShareOrANoughtEstimateChangesNothing) {
    const std::vector<HistoryPoint> history = rising_history(600);
    const SiteStats stats = outstanding_stats(1000, 100);
    const SiteJudgement plain = judge_site(history, stats, VerdictRules{});
    const UntrackedShare none{"maple_node", 0, 1000, 990};
    EXPECT_EQ(judge_site(history, stats, VerdictRules{}, &none), plain);
    EXPECT_EQ(judge_site(history, stats, VerdictRules{}, nullptr), plain);
    EXPECT_EQ(plain.untracked_estimate, 0u);
}

TEST(JudgeSite, MissedFreesByAddressComeFirst) {
    // The replaced rule's own reason; no estimate.
    const UntrackedShare share{"maple_node", 40, 1000, 600};
    const SiteJudgement j = judge_site(rising_history(600), outstanding_stats(1000, 100, 20), VerdictRules{}, &share);
    EXPECT_EQ(j.verdict, Verdict::untracked_frees);
    EXPECT_EQ(j.untracked_estimate, 0u);
    EXPECT_TRUE(j.reason.starts_with("20 of its 1000 allocations had their address allocated again")) << j.reason;
}

// The daemon's loop in small: a site leaking 100 maple nodes every 10 s while
// the kernel says 100 are active (the rest freed unseen), and a site that
// holds 5 kmalloc-128 objects; reconciled and sampled every 10 s.
constexpr std::uint64_t kMapleSite = 0xffffffff81000100, kSteadySite = 0xffffffff81000200;

struct VerdictScenario {
    Feed f;
    SiteVerdicts verdicts{kPeriod, VerdictRules{}};
    SiteVerdicts blind{kPeriod, VerdictRules{}};  // sampled without the kernel's counts
    std::vector<std::uint64_t> held;

    void run(int steps) {
        for (int k = 0; k < steps; ++k) {
            f.ts = 1000 * kSecond + static_cast<std::uint64_t>(k) * kPeriod;
            f.from_cache(kMapleSite, kMapleNode, 256, 100);
            // 5 held from the start, one replaced a step: flat.
            for (const std::uint64_t p : f.kmalloc(kSteadySite, 128, kGfpKernel, k == 0 ? 5 : 1)) held.push_back(p);
            if (held.size() > 5) {
                f.free(held.front());
                held.erase(held.begin());
            }
            const Reconciliation r = reconcile_caches(f.tracker, cache_names(), maple_active(100));
            verdicts.sample(f.tracker.sites(), f.ts + 5, {r.sites});
            blind.sample(f.tracker.sites(), f.ts + 5);
        }
    }
    SiteId site(std::uint64_t call_site) const {
        for (SiteId id = 0; id < f.tracker.sites().size(); ++id)
            if (f.tracker.sites()[id].call_site == call_site) return id;
        ADD_FAILURE() << "no site " << std::hex << call_site;
        return 0;
    }
};

FixedSymbolizer verdict_symbols() {
    return FixedSymbolizer({{kMapleSite, {"mas_alloc_nodes", 0x10, ""}}, {kSteadySite, {"steady_alloc", 0x20, ""}}});
}

TEST(CacheVerdicts, SampledSharesJudgeTheShortCachesSitesUntrackedFrees) {
    VerdictScenario sc;
    sc.run(8);
    const SiteJudgement maple = sc.verdicts.judgement(sc.site(kMapleSite));
    EXPECT_EQ(maple.verdict, Verdict::untracked_frees) << maple.reason;
    EXPECT_EQ(maple.untracked_estimate, 700u);
    EXPECT_EQ(maple.reason,
              "its cache maple_node has 100 active objects in /proc/slabinfo, but kleakd counts 800 live: frees "
              "escape the tracepoints, about 700 of its 800 outstanding");
    EXPECT_EQ(sc.verdicts.growing(), 0u);
    EXPECT_EQ(sc.verdicts.judgement(sc.site(kSteadySite)).verdict, Verdict::steady);
    // Without the kernel's counts the same history is a leak.
    EXPECT_EQ(sc.blind.judgement(sc.site(kMapleSite)).verdict, Verdict::growing);
    EXPECT_EQ(sc.blind.judgement(sc.site(kMapleSite)).untracked_estimate, 0u);
    // A share list shorter than the sites is fine (sites new since the reconciliation).
    SiteVerdicts shorter{kPeriod, VerdictRules{}};
    const std::vector<std::optional<UntrackedShare>> one{std::nullopt};
    shorter.sample(sc.f.tracker.sites(), sc.f.ts + 6, {one});
    EXPECT_EQ(shorter.judgement(sc.site(kMapleSite)).verdict, Verdict::young);
}

TEST(CacheVerdicts, SuspectsAndLeaksRowsCarryTheirCache) {
    VerdictScenario sc;
    sc.run(8);
    FixedSymbolizer symbols = verdict_symbols();
    const std::vector<std::string> caches = site_cache_names(sc.f.tracker, cache_names());
    const std::uint64_t now = sc.f.ts + 5;

    const SuspectsResult r = query_suspects(sc.f.tracker, sc.verdicts, {20, now, caches}, symbols);
    ASSERT_EQ(r.rows.size(), 2u);
    EXPECT_EQ(r.rows[0].site, "steady_alloc+0x20");
    EXPECT_EQ(r.rows[0].cache, "kmalloc-128");
    EXPECT_EQ(r.rows[1].site, "mas_alloc_nodes+0x10");  // untracked-frees rank last
    EXPECT_EQ(r.rows[1].cache, "maple_node");
    const json j = suspects_to_json(r, sc.verdicts);
    EXPECT_EQ(j.at("suspects").at(0).at("cache"), "kmalloc-128");
    EXPECT_FALSE(j.at("suspects").at(0).contains("untracked_estimate"));
    EXPECT_EQ(j.at("suspects").at(1).at("cache"), "maple_node");
    EXPECT_EQ(j.at("suspects").at(1).at("verdict"), "untracked-frees");
    EXPECT_EQ(j.at("suspects").at(1).at("untracked_estimate"), 700);
    // Without the caches, "" (the daemon always brings them).
    const json bare = suspects_to_json(query_suspects(sc.f.tracker, sc.verdicts, {20, now}, symbols), sc.verdicts);
    EXPECT_EQ(bare.at("suspects").at(0).at("cache"), "");

    LeaksQuery q;
    q.now_ns = now;
    q.site_caches = caches;
    const LeaksResult leaks = query_leaks(sc.f.tracker, q, symbols, &sc.verdicts);
    ASSERT_EQ(leaks.rows.size(), 2u);
    const json lj = leaks_to_json(leaks, q);
    EXPECT_EQ(lj.at("sites").at(0).at("site"), "mas_alloc_nodes+0x10");
    EXPECT_EQ(lj.at("sites").at(0).at("cache"), "maple_node");
    EXPECT_EQ(lj.at("sites").at(0).at("verdict"), "untracked-frees");
    EXPECT_EQ(lj.at("sites").at(1).at("cache"), "kmalloc-128");
    LeaksQuery without;
    without.now_ns = now;
    const json plain = leaks_to_json(query_leaks(sc.f.tracker, without, symbols), without);
    EXPECT_FALSE(plain.at("sites").at(0).contains("cache"));

    // A snapshot's sites, matched by address.
    json sites = json::array({{{"address", "0xffffffff81000100"}}, {{"address", "0xffffffff81000200"}},
                              {{"address", "0xffffffff81f00000"}}});
    annotate_verdicts(sites, sc.f.tracker, sc.verdicts, caches);
    EXPECT_EQ(sites.at(0).at("cache"), "maple_node");
    EXPECT_EQ(sites.at(0).at("verdict"), "untracked-frees");
    EXPECT_EQ(sites.at(1).at("cache"), "kmalloc-128");
    // Its allocator and the verdict's reasons, as `suspects` gives them (the HTML report shows both).
    EXPECT_EQ(sites.at(0).at("family"), "slab");
    EXPECT_EQ(sites.at(1).at("family"), "slab");
    EXPECT_EQ(sites.at(0).at("reasons"), j.at("suspects").at(1).at("reasons"));  // steady ranks before untracked
    EXPECT_FALSE(sites.at(2).contains("cache"));  // frees only: no verdict, no cache
    EXPECT_FALSE(sites.at(2).contains("reasons"));
    json unannotated = json::array({{{"address", "0xffffffff81000100"}}});
    annotate_verdicts(unannotated, sc.f.tracker, sc.verdicts);
    EXPECT_FALSE(unannotated.at(0).contains("cache"));
}

TEST(ReconcileCaches, KmallocCachesAreComparedPerSizeWithTheirBucketsAndTypes) {
    // 4,155 64-byte kmallocs held: most went to msg_msg-64 through
    // kmem_buckets, which the size and flags do not name. Per size, the
    // kernel has 2,624 + 4,160 + 128: no excess.
    Feed f;
    f.kmalloc(kS1, 64, kGfpKernel, 4155);
    std::vector<SlabinfoRow> rows = {{"kmalloc-64", 2624, 2816, 64},
                                     {"msg_msg-64", 4160, 4160, 64},
                                     {"memdup_user-64", 128, 128, 64},
                                     {"ext4_groupinfo_64", 9000, 9000, 64},  // not "-64": not a kmalloc cache
                                     {"kmalloc-128", 100, 100, 128}};
    Reconciliation r = reconcile_caches(f.tracker, cache_names(), rows);
    ASSERT_EQ(r.caches.size(), 1u);
    EXPECT_EQ(r.caches[0].name, "kmalloc-64");
    EXPECT_EQ(r.caches[0].kernel_active, 2624u);
    EXPECT_EQ(r.caches[0].kernel_pool_active, 2624u + 4160u + 128u);
    EXPECT_EQ(r.caches[0].excess, 0u);
    EXPECT_FALSE(r.sites.at(0).has_value());

    // Past the whole size's count, the excess is shared by kleakd's kmalloc-64
    // rows of every type, by their live objects: 9,000 + 1,000 against 6,912.
    f.kmalloc(kS1, 64, kGfpKernel, 9000 - 4155);
    f.kmalloc(kS2, 64, kGfpKernel | kGfpAccount, 1000);
    r = reconcile_caches(f.tracker, cache_names(), rows);
    ASSERT_EQ(r.caches.size(), 2u);
    EXPECT_EQ(r.caches[0].name, "kmalloc-64");
    EXPECT_EQ(r.caches[0].excess, 2779u);  // 3,088 * 9,000 / 10,000, rounded
    EXPECT_EQ(r.caches[1].name, "kmalloc-cg-64");
    EXPECT_EQ(r.caches[1].excess, 309u);
    EXPECT_EQ(r.caches[1].pool_live, 10000u);
    const json j = caches_to_json(r, 0);
    EXPECT_DOUBLE_EQ(j.at("caches").at(0).at("coverage").get<double>(), 10000.0 / 6912.0);
    EXPECT_EQ(j.at("caches").at(1).at("kernel_pool_active"), 6912);
}

}  // namespace
}  // namespace kleak::core
