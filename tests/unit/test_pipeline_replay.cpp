// End to end through the pure core: a synthetic multi-CPU allocation stream is
// encoded as raw ABI records into per-CPU recording buffers, read back in the
// order a ring consumer would see them (per-CPU, commits delayed by a bounded
// skew, drains that end mid-frame), decoded, merged with a watermark and
// tracked. With a holdback covering the skew the result must equal applying
// the events in true time order; with a smaller holdback records go late and
// the Merger must count exactly those. The same frames are also fed through
// core::Pipeline (the path live tracing and `kleakd report` use), which must
// agree with the hand-driven Merger + Tracker.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <limits>
#include <memory>
#include <numeric>
#include <unordered_map>

#include "core/event.h"
#include "core/merger.h"
#include "core/pipeline.h"
#include "core/recording_format.h"
#include "core/tracker.h"
#include "test_helpers.h"

namespace kleak::core {
namespace {

using test::event_fields;

using test::Prng;

struct Scenario {
    const char* name;
    std::uint64_t seed;
    unsigned cpus;
    std::size_t events;
    std::uint64_t max_gap_ns;          // between consecutive events, system-wide
    std::uint64_t max_commit_delay_ns;  // how long after its timestamp a record may become readable
    std::uint64_t drain_interval_ns;
    std::uint64_t holdback_ns;          // watermark = drain time - holdback
};

constexpr std::uint64_t kAllocSites[] = {0xffffffff81a00010, 0xffffffff81a00400, 0xffffffff81b12345,
                                         0xffffffffc0a01020, 0xffffffffc0a01100, 0xffffffff81c00008};
constexpr std::uint64_t kFreeSites[] = {0xffffffff81a00440, 0xffffffff81f00000, 0xffffffffc0a00008,
                                        0xffffffff81f00100};
constexpr std::uint64_t kFirstPtr = 0xffff888100000000;
constexpr std::uint64_t kStrayPtr = 0xffff8880dead0000;  // never allocated

// The stream in true time order, plus what it must produce, counted while
// generating (independently of Tracker).
struct TrueStream {
    std::vector<Event> events;
    std::uint64_t allocs = 0;
    std::uint64_t matched_frees = 0;
    std::uint64_t unmatched_frees = 0;
    std::uint64_t replaced = 0;
    std::vector<std::uint64_t> live;  // sorted at the end
    // How adverse the stream is, so the test cannot pass on a tame one.
    std::uint64_t cross_cpu_frees = 0;
    std::uint64_t quick_cross_cpu_reuses = 0;  // realloc on another CPU within the commit delay
};

TrueStream generate(const Scenario& s, Prng& rng) {
    TrueStream out;
    std::vector<std::uint64_t> live;                          // random pick
    std::unordered_map<std::uint64_t, std::size_t> live_index;  // ptr -> index in live
    std::unordered_map<std::uint64_t, std::uint16_t> alloc_cpu;
    std::unordered_map<std::uint64_t, std::pair<std::uint64_t, std::uint16_t>> freed_at;  // ptr -> (ts, cpu)
    std::vector<std::uint64_t> free_list;                     // slab-like LIFO reuse
    std::uint64_t next_fresh = kFirstPtr;
    std::uint64_t next_stray = kStrayPtr;
    std::uint64_t now = 1'000'000;

    auto make_live = [&](std::uint64_t ptr) {
        live_index[ptr] = live.size();
        live.push_back(ptr);
    };
    auto kill = [&](std::uint64_t ptr) {
        const std::size_t i = live_index.at(ptr);
        live_index[live.back()] = i;
        live[i] = live.back();
        live.pop_back();
        live_index.erase(ptr);
    };

    for (std::size_t n = 0; n < s.events; ++n) {
        now += 1 + rng.below(s.max_gap_ns);
        const auto cpu = static_cast<std::uint16_t>(rng.below(s.cpus));
        const auto tgid = static_cast<std::uint32_t>(rng.below(5000));
        const unsigned roll = static_cast<unsigned>(rng.below(100));

        if (live.empty() || roll < 45 || roll >= 95) {
            std::uint64_t ptr;
            if (!live.empty() && roll >= 95) {
                ptr = live[rng.below(live.size())];  // its free was missed: a replacement
                ++out.replaced;
            } else if (!free_list.empty() && rng.percent(60)) {
                ptr = free_list.back();
                free_list.pop_back();
                const auto [freed_ts, freed_cpu] = freed_at.at(ptr);
                if (freed_cpu != cpu && now - freed_ts <= s.max_commit_delay_ns) ++out.quick_cross_cpu_reuses;
                make_live(ptr);
            } else {
                ptr = next_fresh;
                next_fresh += 64 * (1 + rng.below(4));
                make_live(ptr);
            }
            alloc_cpu[ptr] = cpu;
            const auto req = static_cast<std::uint32_t>(1 + rng.below(3000));
            const bool cache = rng.percent(40);
            out.events.push_back(test::alloc_event({
                .ts = now,
                .cpu = cpu,
                .ptr = ptr,
                .site = kAllocSites[rng.below(std::size(kAllocSites))],
                .req = req,
                .alloc = std::bit_ceil(std::max<std::uint32_t>(req, 8)),
                .kind = cache ? EventKind::cache_alloc : EventKind::kmalloc,
                .gfp = static_cast<std::uint32_t>(rng.below(0x1000)),
                .tgid = tgid,
                .stack = static_cast<std::uint32_t>(rng.below(4)),  // 0: none; else a stack, so classes carry origins
            }));
            ++out.allocs;
            continue;
        }

        std::uint64_t ptr;
        if (roll < 89) {
            ptr = live[rng.below(live.size())];
            kill(ptr);
            free_list.push_back(ptr);
            freed_at[ptr] = {now, cpu};
            if (alloc_cpu.at(ptr) != cpu) ++out.cross_cpu_frees;
            ++out.matched_frees;
        } else {
            ptr = next_stray;  // allocated before tracing began
            next_stray += 64;
            ++out.unmatched_frees;
        }
        out.events.push_back(test::free_event({
            .ts = now,
            .cpu = cpu,
            .ptr = ptr,
            .site = kFreeSites[rng.below(std::size(kFreeSites))],
            .kind = rng.percent(50) ? EventKind::kfree : EventKind::cache_free,
            .tgid = tgid,
        }));
    }
    out.live = live;
    std::sort(out.live.begin(), out.live.end());
    return out;
}

// One CPU's recording: header, then frames in ring (commit) order.
struct CpuRing {
    std::vector<std::byte> bytes;
    std::vector<std::uint64_t> commit_ns;  // per frame, ring order
    std::vector<std::size_t> frame_end;    // per frame, offset past it
};

std::vector<CpuRing> write_rings(const Scenario& s, const TrueStream& stream, Prng& rng,
                                 std::uint64_t& in_ring_inversions) {
    // A slow CPU commits later than a fast one: each gets its own bound.
    std::vector<std::uint64_t> cpu_max_delay(s.cpus);
    for (auto& d : cpu_max_delay) d = s.max_commit_delay_ns / 2 + rng.below(s.max_commit_delay_ns / 2 + 1);
    cpu_max_delay[0] = s.max_commit_delay_ns;

    std::vector<std::vector<std::pair<std::uint64_t, const Event*>>> pending(s.cpus);
    for (const Event& e : stream.events) pending[e.cpu].emplace_back(e.ts_ns + rng.below(cpu_max_delay[e.cpu] + 1), &e);

    std::vector<CpuRing> rings(s.cpus);
    in_ring_inversions = 0;
    for (unsigned cpu = 0; cpu < s.cpus; ++cpu) {
        auto& records = pending[cpu];
        std::stable_sort(records.begin(), records.end(),
                         [](const auto& a, const auto& b) { return a.first < b.first; });
        CpuRing& ring = rings[cpu];
        const auto header = encode_file_header({.format_version = kRecordingFormatVersion,
                                                .abi_version = KLEAK_ABI_VERSION, .cpu = cpu});
        ring.bytes.assign(header.begin(), header.end());
        for (std::size_t i = 0; i < records.size(); ++i) {
            if (i > 0 && records[i].second->ts_ns < records[i - 1].second->ts_ns) ++in_ring_inversions;
            append_frame(ring.bytes, test::encode_event(*records[i].second));
            ring.commit_ns.push_back(records[i].first);
            ring.frame_end.push_back(ring.bytes.size());
        }
    }
    return rings;
}

struct ReplayResult {
    std::vector<std::vector<Event>> batches;  // one per release
    std::vector<std::uint64_t> watermarks;    // per batch; max() for the final release_all
    std::uint64_t late = 0;
    std::uint64_t expected_late = 0;          // counted by the harness from what it staged
    std::unique_ptr<Pipeline> pipeline;       // fed the same frames on the same schedule
    std::unique_ptr<Pipeline> sliced;         // the same, releasing in random slices (the daemon's way)
    std::size_t slices = 0;
    std::size_t unfinished = 0;               // releases still in progress when the next drain staged
};

ReplayResult replay(const Scenario& s, const std::vector<CpuRing>& rings, Prng& rng) {
    ReplayResult result;
    Merger merger(s.cpus);
    result.pipeline = std::make_unique<Pipeline>(s.cpus);
    result.sliced = std::make_unique<Pipeline>(s.cpus);
    Prng slice_rng(s.seed ^ 0x5eed);  // its own, so the drain schedule stays as it was
    std::vector<std::size_t> pos(s.cpus);
    std::vector<std::size_t> visible(s.cpus, 0);  // frames committed so far
    std::vector<unsigned> drain_order(s.cpus);
    std::iota(drain_order.begin(), drain_order.end(), 0u);

    for (unsigned cpu = 0; cpu < s.cpus; ++cpu) {
        RecordingFileHeader header;
        EXPECT_EQ(decode_file_header(rings[cpu].bytes, header), std::nullopt);
        EXPECT_EQ(header.cpu, cpu);
        pos[cpu] = kRecordingHeaderSize;
    }

    bool released_any = false;
    std::uint64_t released_watermark = 0;
    auto all_read = [&] {
        for (unsigned cpu = 0; cpu < s.cpus; ++cpu)
            if (pos[cpu] < rings[cpu].bytes.size()) return false;
        return true;
    };

    for (std::uint64_t now = 1'000'000; !all_read(); now += s.drain_interval_ns) {
        // Rings are drained in a different order every time.
        for (std::size_t i = drain_order.size(); i > 1; --i) std::swap(drain_order[i - 1], drain_order[rng.below(i)]);
        for (unsigned cpu : drain_order) {
            const CpuRing& ring = rings[cpu];
            while (visible[cpu] < ring.commit_ns.size() && ring.commit_ns[visible[cpu]] <= now) ++visible[cpu];
            const std::size_t visible_end = visible[cpu] == 0 ? kRecordingHeaderSize : ring.frame_end[visible[cpu] - 1];
            // The chunk may also hold part of a frame still being written.
            std::size_t chunk_end = visible_end;
            if (visible[cpu] < ring.commit_ns.size()) chunk_end += rng.below(ring.frame_end[visible[cpu]] - visible_end);

            FrameReader reader(std::span(ring.bytes).subspan(pos[cpu], chunk_end - pos[cpu]));
            std::span<const std::byte> record;
            FrameStatus status;
            while ((status = reader.next(record)) == FrameStatus::ok) {
                Event event;
                EXPECT_EQ(decode_record(record, static_cast<std::uint16_t>(cpu), event), DecodeStatus::ok);
                if (released_any && event.ts_ns <= released_watermark) ++result.expected_late;
                merger.stage(event);
                result.pipeline->on_record(cpu, record);
                result.sliced->on_record(cpu, record);  // maybe mid-release: waits for the next
            }
            EXPECT_EQ(status, FrameStatus::need_more);
            pos[cpu] += reader.consumed();
            EXPECT_EQ(pos[cpu], visible_end) << "cpu " << cpu << " at " << now;
        }
        if (now > s.holdback_ns) {
            const std::uint64_t watermark = now - s.holdback_ns;
            result.batches.emplace_back();
            merger.release_until(watermark, result.batches.back());
            result.pipeline->release_until(watermark);
            // A few slices of 1..300 records, often leaving the rest for the
            // next drain's first record to finish.
            result.sliced->begin_release(watermark);
            for (auto n = slice_rng.below(4); n > 0 && result.sliced->releasing(); --n, ++result.slices)
                result.sliced->release_some(1 + slice_rng.below(300));
            if (result.sliced->releasing()) ++result.unfinished;
            result.watermarks.push_back(watermark);
            released_any = true;
            released_watermark = std::max(released_watermark, watermark);
        }
    }
    result.batches.emplace_back();
    merger.release_all(result.batches.back());
    // End of input, as `kleakd report` ends a replay: finish, then settle.
    result.pipeline->finish();
    result.pipeline->settle();
    result.sliced->finish();
    result.sliced->settle();
    result.watermarks.push_back(std::numeric_limits<std::uint64_t>::max());
    EXPECT_EQ(merger.staged(), 0u);
    result.late = merger.late();
    return result;
}

std::vector<Event> concatenated(const ReplayResult& result) {
    std::vector<Event> out;
    for (const auto& batch : result.batches) out.insert(out.end(), batch.begin(), batch.end());
    return out;
}

void expect_batches_ordered_and_bounded(const ReplayResult& result) {
    for (std::size_t b = 0; b < result.batches.size(); ++b) {
        const auto& batch = result.batches[b];
        for (std::size_t i = 0; i < batch.size(); ++i) {
            ASSERT_LE(batch[i].ts_ns, result.watermarks[b]) << "batch " << b;
            if (i > 0) {
                ASSERT_LT(batch[i - 1].ts_ns, batch[i].ts_ns) << "batch " << b << " index " << i;
            }
        }
    }
}

// Compares keyed maps entry by entry, reporting the first difference rather
// than printing thousands of entries.
template <class Map>
void expect_same_entries(const Map& got, const Map& expected, const char* what) {
    EXPECT_EQ(got.size(), expected.size()) << what;
    for (const auto& [key, value] : expected) {
        const auto it = got.find(key);
        ASSERT_NE(it, got.end()) << what << ": missing 0x" << std::hex << key;
        ASSERT_EQ(it->second, value) << what << ": differs at 0x" << std::hex << key;
    }
}

void expect_same_tracker(const Tracker& got, const Tracker& reference) {
    EXPECT_EQ(test::totals_fields(got.totals()), test::totals_fields(reference.totals()));
    EXPECT_EQ(got.displaced_count(), reference.displaced_count());
    expect_same_entries(test::sites_by_address(got), test::sites_by_address(reference), "sites");
    expect_same_entries(test::outstanding_by_ptr(got), test::outstanding_by_ptr(reference), "outstanding");
}

class PipelineReplay : public ::testing::TestWithParam<Scenario> {
protected:
    void SetUp() override {
        const Scenario& s = GetParam();
        Prng rng(s.seed);
        stream = generate(s, rng);
        rings = write_rings(s, stream, rng, in_ring_inversions);
        result = replay(s, rings, rng);
        merged.apply(concatenated(result));
        merged.settle();
        reference.apply(stream.events);
        reference_before_settle = reference.totals();
        reference_displaced_before_settle = reference.displaced_count();
        reference.settle();
    }

    TrueStream stream;
    std::vector<CpuRing> rings;
    std::uint64_t in_ring_inversions = 0;
    ReplayResult result;
    Tracker merged;     // settled: the end of input
    Tracker reference;  // settled too
    Totals reference_before_settle;
    std::size_t reference_displaced_before_settle = 0;
};

// Holdback >= the largest commit delay: nothing can be late.
class OnTimeReplay : public PipelineReplay {};
// Holdback < the commit delay: some records arrive behind the watermark.
class LateReplay : public PipelineReplay {};

TEST_P(PipelineReplay, StreamIsAdverse) {
    // Guard against a generator change that makes the suite trivially pass.
    if (GetParam().cpus > 1) {
        EXPECT_GT(stream.cross_cpu_frees, 100u);
        EXPECT_GT(stream.quick_cross_cpu_reuses, 20u);
    }
    EXPECT_GT(in_ring_inversions, 100u);
    EXPECT_GT(stream.replaced, 50u);
    EXPECT_GT(stream.unmatched_frees, 50u);
    EXPECT_GT(result.batches.size(), 10u);
}

TEST_P(PipelineReplay, ReferenceMatchesTheGeneratorsOwnCounts) {
    // Every free in the stream read the clock and follows what it frees, so
    // none is reordered; the stream spans about a millisecond of event time,
    // far inside Tracker::kDisplacedHorizonNs, so each replacement waits
    // displaced until the end (bar a pointer displaced twice, counted at
    // once), and settling counts them all.
    EXPECT_EQ(reference_before_settle.reordered_frees, 0u);
    EXPECT_GT(reference_displaced_before_settle, 0u);
    EXPECT_EQ(reference_before_settle.replaced + reference_displaced_before_settle, stream.replaced);
    EXPECT_EQ(reference.displaced_count(), 0u);

    const Totals& t = reference.totals();
    EXPECT_EQ(t.allocs, stream.allocs);
    EXPECT_EQ(t.frees, stream.matched_frees);
    EXPECT_EQ(t.unmatched_frees, stream.unmatched_frees);
    EXPECT_EQ(t.replaced, stream.replaced);
    EXPECT_EQ(t.reordered_frees, 0u);
    std::vector<std::uint64_t> live;
    for (const auto& [ptr, entry] : test::outstanding_by_ptr(reference)) live.push_back(ptr);
    EXPECT_EQ(live, stream.live);
}

TEST_P(PipelineReplay, EveryRecordIsReleasedOnceInOrderWithinEachRelease) {
    std::vector<Event> released = concatenated(result);
    ASSERT_EQ(released.size(), stream.events.size());
    expect_batches_ordered_and_bounded(result);
    std::stable_sort(released.begin(), released.end(),
                     [](const Event& a, const Event& b) { return a.ts_ns < b.ts_ns; });
    for (std::size_t i = 0; i < released.size(); ++i)
        ASSERT_EQ(event_fields(released[i]), event_fields(stream.events[i])) << "event " << i;
}

TEST_P(PipelineReplay, LateCountIsExactlyWhatWasStagedBehindTheWatermark) {
    EXPECT_EQ(result.late, result.expected_late);
}

TEST_P(PipelineReplay, TrackerIsConsistentAndOrderFreeTotalsAgree) {
    // Holds even when records were late: these do not depend on order.
    EXPECT_EQ(test::totals_fields(test::sum_over_sites(merged)), test::totals_fields(merged.totals()));
    EXPECT_EQ(merged.outstanding_count(), merged.totals().outstanding);
    EXPECT_EQ(merged.totals().allocs, reference.totals().allocs);
    EXPECT_EQ(merged.totals().bytes_alloc, reference.totals().bytes_alloc);
    EXPECT_EQ(merged.totals().bytes_req, reference.totals().bytes_req);
    EXPECT_EQ(merged.totals().frees + merged.totals().unmatched_frees,
              reference.totals().frees + reference.totals().unmatched_frees);
}

TEST_P(PipelineReplay, CorePipelineAgreesWithMergerAndTracker) {
    const Pipeline& pipeline = *result.pipeline;
    EXPECT_EQ(pipeline.records(), stream.events.size());
    EXPECT_EQ(pipeline.undecodable(), 0u);
    EXPECT_EQ(pipeline.staged(), 0u);
    EXPECT_EQ(pipeline.late(), result.late);
    expect_same_tracker(pipeline.tracker(), merged);

    std::vector<std::uint64_t> newest(GetParam().cpus, 0);
    for (const Event& e : stream.events) newest[e.cpu] = std::max(newest[e.cpu], e.ts_ns);
    for (unsigned cpu = 0; cpu < GetParam().cpus; ++cpu) EXPECT_EQ(pipeline.newest_ts(cpu), newest[cpu]) << cpu;
}

TEST_P(PipelineReplay, SlicedReleaseTracksExactlyLikeOneShotRelease) {
    const Pipeline& one_shot = *result.pipeline;
    const Pipeline& sliced = *result.sliced;
    EXPECT_GT(result.slices, result.batches.size() / 2);
    EXPECT_GT(result.unfinished, 10u);
    EXPECT_EQ(sliced.records(), one_shot.records());
    EXPECT_EQ(sliced.late(), one_shot.late());
    EXPECT_EQ(sliced.staged(), 0u);
    EXPECT_FALSE(sliced.releasing());
    expect_same_tracker(sliced.tracker(), one_shot.tracker());
    // Sites are interned in the order records reach the tracker: the same
    // list in the same order says the records came in the same order.
    const auto& got = sliced.tracker().sites();
    const auto& expected = one_shot.tracker().sites();
    ASSERT_EQ(got.size(), expected.size());
    for (std::size_t i = 0; i < got.size(); ++i)
        EXPECT_EQ(test::site_fields(got[i]), test::site_fields(expected[i])) << "site " << i;
}

TEST_P(OnTimeReplay, NothingIsLate) {
    EXPECT_EQ(result.late, 0u);
    EXPECT_EQ(result.expected_late, 0u);
}

TEST_P(OnTimeReplay, ReleasedSequenceIsTheTrueOrder) {
    const std::vector<Event> released = concatenated(result);
    ASSERT_EQ(released.size(), stream.events.size());
    for (std::size_t i = 0; i < released.size(); ++i)
        ASSERT_EQ(event_fields(released[i]), event_fields(stream.events[i])) << "event " << i;
}

TEST_P(OnTimeReplay, TrackerEqualsTheTrueOrderReference) {
    expect_same_tracker(merged, reference);
}

TEST_P(LateReplay, LateRecordsAreCounted) {
    EXPECT_GT(result.late, 100u);
    EXPECT_EQ(result.late, result.expected_late);
}

TEST_P(LateReplay, LateRecordsChangeTheOutcome) {
    // Why late is reported at all: a record released behind records it
    // preceded cannot be put back in order, so matching goes wrong.
    EXPECT_GT(merged.totals().unmatched_frees, reference.totals().unmatched_frees);
}

void PrintTo(const Scenario& s, std::ostream* os) { *os << s.name; }

std::string scenario_name(const ::testing::TestParamInfo<Scenario>& info) { return info.param.name; }

//                                   name                    seed cpus events gap  delay  drain holdback
const std::vector<Scenario> kOnTime = {{"FourCpus",                1,   4, 20000, 40,  3000,  1000, 3000},
                                       {"FourCpusSeed2",           2,   4, 20000, 40,  3000,  1000, 3000},
                                       {"FourCpusDenser",          3,   4, 20000, 25,  2000,   700, 2500},
                                       {"SixteenCpus",             4,  16, 30000, 20,  5000,  1500, 5000},
                                       {"OneCpu",                  5,   1, 10000, 40,  2000,   900, 2000},
                                       {"DrainSlowerThanSkew",     6,   8, 20000, 30,  1500,  5000, 1500}};
const std::vector<Scenario> kLate = {{"SkewExceedsHoldback",       7,   4, 20000, 40,  8000,  1000, 1000},
                                     {"SkewFarExceedsHoldback",    8,   8, 20000, 20, 20000,  2000,    0}};

std::vector<Scenario> all_scenarios() {
    std::vector<Scenario> all = kOnTime;
    all.insert(all.end(), kLate.begin(), kLate.end());
    return all;
}

INSTANTIATE_TEST_SUITE_P(Streams, PipelineReplay, ::testing::ValuesIn(all_scenarios()), scenario_name);
INSTANTIATE_TEST_SUITE_P(Streams, OnTimeReplay, ::testing::ValuesIn(kOnTime), scenario_name);
INSTANTIATE_TEST_SUITE_P(Streams, LateReplay, ::testing::ValuesIn(kLate), scenario_name);

// --- core::Pipeline on its own ---------------------------------------------------

TEST(Pipeline, UndecodableRecordsAreCountedNotStaged) {
    Pipeline pipeline(2);
    const Event alloc = test::alloc_event({.ts = 10, .ptr = 0x1000, .site = kAllocSites[0], .req = 8, .alloc = 8});
    const std::vector<std::byte> good = test::encode_event(alloc);
    kleak_free_record unknown = test::free_record(test::free_event({.ts = 11, .ptr = 0x1000, .site = kFreeSites[0]}));
    unknown.hdr.kind = 42;

    pipeline.on_record(0, good);
    pipeline.on_record(1, std::span(good).first(20));         // too short
    pipeline.on_record(1, test::record_bytes(unknown));       // unknown kind
    EXPECT_EQ(pipeline.records(), 1u);
    EXPECT_EQ(pipeline.undecodable(), 2u);
    EXPECT_EQ(pipeline.staged(), 1u);
    EXPECT_EQ(pipeline.newest_ts(0), 10u);
    EXPECT_EQ(pipeline.newest_ts(1), 0u);  // nothing decodable came from CPU1

    pipeline.finish();
    EXPECT_EQ(pipeline.staged(), 0u);
    EXPECT_EQ(pipeline.tracker().totals().allocs, 1u);
    EXPECT_EQ(pipeline.tracker().totals().unmatched_frees, 0u);
}

TEST(Pipeline, ReleasesUpToTheWatermarkIntoTheTracker) {
    Pipeline pipeline(2);
    const std::uint64_t ptr = 0x2000;
    // The free (CPU1) arrives before the allocation it frees (CPU0).
    pipeline.on_record(1, test::encode_event(test::free_event({.ts = 200, .cpu = 1, .ptr = ptr, .site = kFreeSites[1]})));
    pipeline.on_record(0, test::encode_event(
                              test::alloc_event({.ts = 100, .ptr = ptr, .site = kAllocSites[1], .req = 30, .alloc = 32})));
    pipeline.release_until(150);
    EXPECT_EQ(pipeline.tracker().totals().outstanding, 1u);
    EXPECT_EQ(pipeline.staged(), 1u);
    pipeline.release_until(200);
    EXPECT_EQ(pipeline.tracker().totals().outstanding, 0u);
    EXPECT_EQ(pipeline.tracker().totals().frees, 1u);
    EXPECT_EQ(pipeline.tracker().totals().unmatched_frees, 0u);
    EXPECT_EQ(pipeline.late(), 0u);
}

TEST(Pipeline, RecordsFromAnUnknownCpuAreKept) {
    Pipeline pipeline(2);
    pipeline.on_record(9, test::encode_event(test::alloc_event({.ts = 5, .ptr = 0x3000, .site = kAllocSites[2]})));
    EXPECT_EQ(pipeline.records(), 1u);
    EXPECT_EQ(pipeline.newest_ts(1), 5u);  // tracked with the last CPU
    EXPECT_EQ(pipeline.newest_ts(9), 0u);
    pipeline.finish();
    EXPECT_EQ(pipeline.tracker().totals().allocs, 1u);
}

TEST(Pipeline, ResetStartsAFreshBaseline) {
    Pipeline pipeline(1);
    pipeline.on_record(0, test::encode_event(test::alloc_event({.ts = 100, .ptr = 0x4000, .site = kAllocSites[3]})));
    pipeline.on_record(0, std::span(test::encode_event(test::free_event({.ts = 1})).data(), 3));
    pipeline.release_until(1000);
    pipeline.on_record(0, test::encode_event(test::free_event({.ts = 50, .ptr = 0x4000, .site = kFreeSites[2]})));
    ASSERT_EQ(pipeline.late(), 1u);

    pipeline.reset();
    EXPECT_EQ(pipeline.records(), 0u);
    EXPECT_EQ(pipeline.undecodable(), 0u);
    EXPECT_EQ(pipeline.late(), 0u);
    EXPECT_EQ(pipeline.staged(), 0u);
    EXPECT_EQ(pipeline.newest_ts(0), 0u);
    EXPECT_EQ(pipeline.tracker().outstanding_count(), 0u);
    EXPECT_TRUE(pipeline.tracker().sites().empty());

    // The old watermark is forgotten too: an early record is not late.
    pipeline.on_record(0, test::encode_event(test::free_event({.ts = 10, .ptr = 0x4000, .site = kFreeSites[2]})));
    EXPECT_EQ(pipeline.late(), 0u);
    pipeline.release_until(10);
    EXPECT_EQ(pipeline.tracker().totals().unmatched_frees, 1u);
}

}  // namespace
}  // namespace kleak::core
