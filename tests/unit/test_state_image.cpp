// The daemon's state image (core/state_image.h): a tracker, printk window and
// histories written and read back exactly, a loaded tracker that goes on
// exactly as the original would have (its derived state rebuilt), and every
// refusal: truncated, damaged, another format, ABI or boot (another build of
// the same format is accepted: an upgrade).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <tuple>
#include <vector>

#include "core/pipeline.h"
#include "core/site_verdicts.h"
#include "core/state_image.h"
#include "kleak_abi.h"
#include "test_helpers.h"

namespace {

using namespace kleak::core;
using namespace kleak::test;

const StateOrigin kHere{"kleakd-test+bpf-1234", "6c1f0e6e-2b7a-4c55-9a4e-0d3b1f2a9c11"};

// A synthetic stream with every kind of tracker state in it: several
// families and sites, frees of known and unknown pointers (some naming a
// cache), pointers allocated twice (displaced entries), from `seed`.
std::vector<Event> stream(std::uint64_t seed, std::uint64_t t0, std::size_t n) {
    kleak::test::Prng rng(seed);
    std::vector<Event> out;
    std::uint64_t ts = t0;
    for (std::size_t i = 0; i < n; ++i) {
        ts += rng.between(1, 3'000'000);
        const std::uint64_t ptr = 0xffff888000000000ULL + rng.below(4000) * 64;
        const std::uint64_t site = 0xffffffff81000000ULL + rng.below(40) * 0x10;
        const unsigned what = static_cast<unsigned>(rng.below(10));
        if (what < 5) {
            const auto kind = rng.percent(50) ? EventKind::kmalloc : EventKind::cache_alloc;
            const auto size = static_cast<std::uint32_t>(8u << rng.below(6));
            out.push_back(alloc_event({.ts = ts, .ptr = ptr, .site = site, .req = size, .alloc = size, .kind = kind,
                                       .cache = kind == EventKind::cache_alloc ? 0xffff88800aaa0000ULL : 0}));
        } else if (what < 6) {
            out.push_back(alloc_event({.ts = ts, .ptr = family_key(Family::page, ptr), .site = site + 0x100000, .req = 4096,
                                       .alloc = 4096, .kind = EventKind::page_alloc}));
        } else if (what < 9) {
            out.push_back(free_event({.ts = ts, .ptr = ptr, .site = site + 8, .cache = rng.percent(30) ? 0xffff88800bbb0000ULL : 0}));
        } else {
            out.push_back(free_event({.ts = ts, .ptr = family_key(Family::page, ptr), .kind = EventKind::page_free}));
        }
    }
    return out;
}

using Live = std::vector<std::tuple<std::uint64_t, std::uint64_t, SiteId, std::uint32_t>>;
Live live_of(const Tracker& t) {
    Live out;
    t.for_each_outstanding([&](std::uint64_t ptr, const OutstandingAllocation& a) {
        out.emplace_back(ptr, a.ts_ns, a.site, a.bytes_alloc);
    });
    std::sort(out.begin(), out.end());
    return out;
}

// pending_slots: whether both saw the same kfrees of unseen objects still
// waiting for an allocation to name their cache (unseen_free_slots.h); the
// image does not keep those (at most a minute of evidence).
void expect_same(const Tracker& a, const Tracker& b, bool pending_slots = true) {
    ASSERT_EQ(a.sites().size(), b.sites().size());
    for (std::size_t i = 0; i < a.sites().size(); ++i) {
        const SiteStats &x = a.sites()[i], &y = b.sites()[i];
        EXPECT_EQ(std::tie(x.call_site, x.kind, x.family, x.allocs, x.bytes_alloc, x.bytes_req, x.frees, x.bytes_freed,
                           x.replaced, x.replaced_bytes, x.outstanding, x.outstanding_bytes, x.free_calls,
                           x.unmatched_frees, x.reclaimable),
                  std::tie(y.call_site, y.kind, y.family, y.allocs, y.bytes_alloc, y.bytes_req, y.frees, y.bytes_freed,
                           y.replaced, y.replaced_bytes, y.outstanding, y.outstanding_bytes, y.free_calls,
                           y.unmatched_frees, y.reclaimable))
            << "site " << i;
    }
    const Totals &x = a.totals(), &y = b.totals();
    EXPECT_EQ(std::tie(x.allocs, x.frees, x.bytes_alloc, x.bytes_req, x.bytes_freed, x.unmatched_frees, x.replaced,
                       x.outstanding, x.outstanding_bytes, x.reordered_frees),
              std::tie(y.allocs, y.frees, y.bytes_alloc, y.bytes_req, y.bytes_freed, y.unmatched_frees, y.replaced,
                       y.outstanding, y.outstanding_bytes, y.reordered_frees));
    EXPECT_EQ(a.displaced_count(), b.displaced_count());
    EXPECT_EQ(a.class_count(), b.class_count());
    EXPECT_EQ(a.class_overflows(), b.class_overflows());
    EXPECT_EQ(a.overflow_count(), b.overflow_count());
    if (pending_slots) EXPECT_EQ(a.unseen_frees_by_cache(), b.unseen_frees_by_cache());
    EXPECT_EQ(live_of(a), live_of(b));
    std::vector<std::tuple<SiteId, std::uint32_t, std::uint64_t, std::uint64_t>> ca, cb;
    a.for_each_class([&](const AllocationClass& c, std::uint64_t key, std::uint64_t n) { ca.emplace_back(c.site, c.bytes_alloc, key, n); });
    b.for_each_class([&](const AllocationClass& c, std::uint64_t key, std::uint64_t n) { cb.emplace_back(c.site, c.bytes_alloc, key, n); });
    EXPECT_EQ(ca, cb);
}

StateMeta meta(StateKind kind = StateKind::checkpoint) {
    return StateMeta{kHere, kind, 123'456'789, 42, {4096, 8192}};
}

TEST(StateImage, RoundTripThenBothGoOnAlike) {
    Tracker original(64);  // a small class table: some classes overflow
    original.apply(stream(1, 1'000'000'000, 20'000));
    ASSERT_GT(original.displaced_count(), 0u) << "the stream should leave displaced entries";
    ASSERT_GT(original.overflow_count(), 0u) << "the stream should overflow the class table";
    const std::vector<std::byte> image = write_state_image(meta(), original, nullptr, nullptr);

    Tracker loaded(64);
    const LoadedState state = read_state_image(image, kHere, loaded, nullptr);
    ASSERT_TRUE(state.meta) << state.error;
    EXPECT_EQ(state.meta->kind, StateKind::checkpoint);
    EXPECT_EQ(state.meta->written_ns, 123'456'789u);
    EXPECT_EQ(state.meta->records, 42u);
    EXPECT_EQ(state.meta->ring_positions, (std::vector<std::uint64_t>{4096, 8192}));
    expect_same(original, loaded);

    // The derived state (per-class counts, expiry of displaced entries) came
    // back too: the same continuation leaves both alike.
    const std::vector<Event> more = stream(2, 1'000'000'000 + 20'000 * 3'000'000ull, 20'000);
    original.apply(more);
    loaded.apply(more);
    original.settle();
    loaded.settle();
    expect_same(original, loaded, /*pending_slots=*/false);
    // The loaded tracker named fewer kfrees' caches: those freed before the image.
    for (const auto& [cache, n] : loaded.unseen_frees_by_cache()) EXPECT_LE(n, original.unseen_frees_by_cache().at(cache));
}

// Allocations that differed only by their kernel stack are one class after a
// restart: the stack ids named stacks in the old process's BPF map.
TEST(StateImage, ClassesThatDifferedOnlyByStackBecomeOne) {
    Tracker original;
    constexpr std::uint64_t kSite = 0xffffffff81000100ULL;
    for (std::uint32_t i = 0; i < 6; ++i)
        original.apply(alloc_event({.ts = 1000 + i, .ptr = 0xffff888000001000ULL + i * 64, .site = kSite, .req = 64,
                                    .alloc = 64, .tgid = 100 + i % 2, .stack = 1 + i % 3}));
    const std::vector<std::byte> image = write_state_image(meta(), original, nullptr, nullptr);
    Tracker loaded;
    const LoadedState state = read_state_image(image, kHere, loaded, nullptr);
    ASSERT_TRUE(state.meta) << state.error;
    EXPECT_EQ(original.class_count(), 6u);  // (site, 64 bytes) x 3 stacks x 2 processes
    EXPECT_EQ(loaded.class_count(), 1u);
    EXPECT_EQ(live_of(loaded), live_of(original));
    EXPECT_EQ(loaded.sites()[0].outstanding, 6u);
    // And they free as they were: every one, none unmatched.
    for (std::uint32_t i = 0; i < 6; ++i)
        loaded.apply(free_event({.ts = 2000 + i, .ptr = 0xffff888000001000ULL + i * 64, .site = kSite + 8}));
    EXPECT_EQ(loaded.totals().outstanding, 0u);
    EXPECT_EQ(loaded.totals().unmatched_frees, 0u);
    EXPECT_EQ(loaded.sites()[0].outstanding_bytes, 0u);
}

TEST(StateImage, AgeIndexRebuilt) {
    Tracker original, loaded;
    original.index_ages();
    loaded.index_ages();
    original.apply(stream(3, 1'000'000'000, 30'000));
    ASSERT_TRUE(read_state_image(write_state_image(meta(), original, nullptr, nullptr), kHere, loaded, nullptr).meta);
    ASSERT_TRUE(loaded.ages_indexed());
    for (const std::uint64_t born_by : {2'000'000'000ull, 20'000'000'000ull, 40'000'000'000ull}) {
        const auto a = original.outstanding_born_by_epochs(born_by);
        const auto b = loaded.outstanding_born_by_epochs(born_by);
        const auto exact = loaded.outstanding_born_by(born_by);
        ASSERT_EQ(a.size(), b.size());
        for (std::size_t i = 0; i < a.size(); ++i) {
            // Epoch bounds may differ (built in another order), never by more
            // than the index's resolution allows: both within the exact count.
            EXPECT_LE(b[i].count, exact[i].count) << "site " << i;
            EXPECT_LE(a[i].count, exact[i].count) << "site " << i;
        }
    }
}

TEST(StateImage, PrintkWindowAndHistoriesRoundTrip) {
    Tracker tracker;
    tracker.apply(stream(4, 1'000'000'000, 2'000));
    PrintkLog log(3);
    for (int i = 0; i < 5; ++i)
        log.append({0, 1'000u + i, 1, 7, 8, i % 2 == 0 ? 4 : -1, i == 3, "line \x01" + std::to_string(i)});
    SiteVerdicts verdicts(10'000'000'000, VerdictRules{});
    verdicts.sample(tracker.sites(), 10'000'000'000);
    verdicts.sample(tracker.sites(), 20'000'000'000);

    const std::vector<std::byte> image = write_state_image(meta(StateKind::clean_stop), tracker, &log, &verdicts);
    Tracker t2;
    PrintkLog log2(100);
    const LoadedState state = read_state_image(image, kHere, t2, &log2);
    ASSERT_TRUE(state.meta) << state.error;
    EXPECT_EQ(state.meta->kind, StateKind::clean_stop);
    EXPECT_EQ(log2.last_seq(), 5u);
    EXPECT_EQ(log2.evicted(), 2u);
    const auto a = log.query({}), b = log2.query({});
    ASSERT_EQ(a.size(), 3u);
    ASSERT_EQ(b.size(), 3u);
    for (std::size_t i = 0; i < a.size(); ++i) {
        EXPECT_EQ(std::tie(a[i].seq, a[i].ts_ns, a[i].cpu, a[i].tgid, a[i].tid, a[i].level, a[i].truncated, a[i].text),
                  std::tie(b[i].seq, b[i].ts_ns, b[i].cpu, b[i].tgid, b[i].tid, b[i].level, b[i].truncated, b[i].text));
    }
    EXPECT_EQ(log2.append({}).seq, 6u) << "numbering goes on";

    // Every site with points, by address, all tiers.
    // (An address two families' sites share keeps the first's, as
    // snapshots do: those are left out here.)
    std::map<std::uint64_t, int> sharing;
    for (const SiteStats& s : tracker.sites()) ++sharing[s.call_site];
    std::size_t with_history = 0;
    for (SiteId id = 0; id < tracker.sites().size(); ++id) {
        if (!verdicts.histories().has_history(id)) continue;
        const auto it = state.histories.find(tracker.sites()[id].call_site);
        ASSERT_NE(it, state.histories.end());
        if (sharing[tracker.sites()[id].call_site] > 1) continue;
        ++with_history;
        EXPECT_EQ(it->second[0], verdicts.histories().series(id, 0));
    }
    EXPECT_GT(with_history, 10u);
}

// A checkpoint is taken between release slices (app/daemon.cpp): the
// tracker then holds a prefix of the merged stream, with records staged
// behind it. At every slice boundary the image loads (its aggregates agree
// with its entries) into a tracker equal to the live one.
TEST(StateImage, CheckpointBetweenReleaseSlicesIsConsistent) {
    Pipeline pipeline(2);
    pipeline.index_ages();
    std::vector<Event> events = stream(6, 1'000'000'000, 6'000);
    std::size_t checkpoints = 0;
    for (std::size_t at = 0; at < events.size(); at += 500) {
        for (std::size_t i = at; i < std::min(at + 500, events.size()); ++i) {
            events[i].cpu = static_cast<std::uint16_t>(i % 2);
            pipeline.on_record(events[i].cpu, encode_event(events[i]));
        }
        pipeline.begin_release(events[std::min(at + 500, events.size()) - 1].ts_ns - 100'000'000);
        while (pipeline.release_some(97)) {
            Tracker loaded;
            loaded.index_ages();
            const LoadedState state =
                read_state_image(write_state_image(meta(), pipeline.tracker(), nullptr, nullptr), kHere, loaded, nullptr);
            ASSERT_TRUE(state.meta) << "at event " << at << ": " << state.error;
            expect_same(pipeline.tracker(), loaded);
            ++checkpoints;
        }
    }
    EXPECT_GT(checkpoints, 20u);
}

TEST(StateImage, EmptyTrackerRoundTrips) {
    Tracker empty, loaded;
    const LoadedState state = read_state_image(write_state_image(meta(), empty, nullptr, nullptr), kHere, loaded, nullptr);
    ASSERT_TRUE(state.meta) << state.error;
    EXPECT_EQ(loaded.outstanding_count(), 0u);
}

// What the refusals leave: an empty tracker and printk window, and a reason.
void expect_refused(std::span<const std::byte> image, const StateOrigin& here, const std::string& reason_part) {
    Tracker t;
    PrintkLog log(10);
    const LoadedState state = read_state_image(image, here, t, &log);
    EXPECT_FALSE(state.meta);
    EXPECT_NE(state.error.find(reason_part), std::string::npos) << state.error;
    EXPECT_EQ(t.outstanding_count(), 0u);
    EXPECT_TRUE(t.sites().empty());
    EXPECT_EQ(log.size(), 0u);
}

class Refusals : public ::testing::Test {
protected:
    void SetUp() override {
        tracker.apply(stream(5, 1'000'000'000, 3'000));
        log.append({0, 5, 0, 1, 1, 3, false, "hello"});
        image = write_state_image(meta(), tracker, &log, nullptr);
    }
    // Rewrites the checksum after a change, so only the change is refused.
    void reseal() {
        const std::uint64_t sum = state_checksum(std::span(image).subspan(kStateHeaderBytes));
        std::memcpy(image.data() + 24, &sum, 8);
    }
    Tracker tracker;
    PrintkLog log{10};
    std::vector<std::byte> image;
};

TEST_F(Refusals, Truncated) {
    for (const std::size_t keep : {std::size_t{0}, std::size_t{7}, kStateHeaderBytes - 1, kStateHeaderBytes,
                                   image.size() / 2, image.size() - 1})
        expect_refused(std::span(image).first(keep), kHere, "truncated");
}

TEST_F(Refusals, BadChecksum) {
    image[image.size() / 2] ^= std::byte{0x10};
    expect_refused(image, kHere, "checksum");
}

TEST_F(Refusals, NotAnImage) {
    image[0] = std::byte{'X'};
    expect_refused(image, kHere, "not a kleakd state image");
}

TEST_F(Refusals, OtherFormatVersion) {
    const std::uint32_t v = kStateFormatVersion + 1;
    std::memcpy(image.data() + 8, &v, 4);
    expect_refused(image, kHere, "state format 2");
}

TEST_F(Refusals, OtherAbi) {
    const std::uint32_t abi = KLEAK_ABI_VERSION + 1;
    std::memcpy(image.data() + 12, &abi, 4);
    expect_refused(image, kHere, "record ABI");
}

// An upgrade of the same format and ABI keeps the state, and says whose it was.
TEST_F(Refusals, OtherBuildOfTheSameFormatIsAccepted) {
    Tracker t;
    const LoadedState s = read_state_image(image, {"kleakd-upgraded", kHere.boot_id}, t, nullptr);
    ASSERT_TRUE(s.meta) << s.error;
    EXPECT_EQ(s.meta->origin.build_id, kHere.build_id);
    EXPECT_EQ(t.outstanding_count(), tracker.outstanding_count());
}

TEST_F(Refusals, OtherBoot) { expect_refused(image, {kHere.build_id, "another-boot"}, "written in boot"); }

// A damaged body whose checksum was recomputed (a bug, not a disk): every
// byte flipped in turn is refused or loads into a consistent tracker, never
// crashes nor allocates by a damaged count.
TEST_F(Refusals, DamagedSectionsNeverCrash) {
    const std::vector<std::byte> good = image;
    std::size_t refused = 0;
    for (std::size_t at = kStateHeaderBytes; at < good.size(); at += 7) {
        image = good;
        image[at] ^= std::byte{0xA5};
        reseal();
        Tracker t;
        PrintkLog l(10);
        const LoadedState s = read_state_image(image, kHere, t, &l);
        if (!s.meta) {
            ++refused;
            EXPECT_EQ(t.outstanding_count(), 0u);
        } else {
            EXPECT_EQ(t.totals().outstanding, t.outstanding_count());
        }
    }
    EXPECT_GT(refused, 0u);
}

}  // namespace
