// Micro-benchmarks of the pure core: records/s through decode + merge +
// tracker, and bytes per outstanding allocation. Run: build/bench/bench_core
#include <benchmark/benchmark.h>

#include "core/pipeline.h"
#include "synthetic_stream.h"

namespace {

using kleak::bench::synthetic_stream;

// Decode + stage + time-ordered release + tracker, in drain-sized batches
// (the live path minus the ring).
void BM_PipelineThroughput(benchmark::State& state) {
    const auto live = static_cast<std::size_t>(state.range(0));
    const auto records = synthetic_stream(2'000'000, 2, live);
    for (auto _ : state) {
        kleak::core::Pipeline pipeline(2);
        std::uint64_t last_ts = 0;
        std::size_t batch = 0;
        for (const auto& r : records) {
            pipeline.on_record(r.cpu, {r.bytes, r.size});
            if (++batch == 65536) {
                std::uint64_t ts;
                std::memcpy(&ts, r.bytes, sizeof ts);
                last_ts = ts;
                pipeline.release_until(last_ts > 100'000 ? last_ts - 100'000 : 0);
                batch = 0;
            }
        }
        pipeline.finish();
        benchmark::DoNotOptimize(pipeline.tracker().totals().outstanding);
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * records.size()));
}
BENCHMARK(BM_PipelineThroughput)->Arg(10'000)->Arg(1'000'000)->Unit(benchmark::kMillisecond)->UseRealTime();

// Tracker alone, on events already in order.
void BM_TrackerApply(benchmark::State& state) {
    const auto records = synthetic_stream(2'000'000, 1, 100'000);
    std::vector<kleak::core::Event> events(records.size());
    for (std::size_t i = 0; i < records.size(); ++i)
        kleak::core::decode_record({records[i].bytes, records[i].size}, 0, events[i]);
    for (auto _ : state) {
        kleak::core::Tracker tracker;
        tracker.apply(events);
        benchmark::DoNotOptimize(tracker.totals().outstanding);
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * events.size()));
}
BENCHMARK(BM_TrackerApply)->Unit(benchmark::kMillisecond)->UseRealTime();

// Memory the tracker holds per outstanding allocation with 1M outstanding.
void BM_TrackerBytesPerOutstanding(benchmark::State& state) {
    const std::size_t n = 1'000'000;
    double per_entry = 0;
    for (auto _ : state) {
        kleak::core::Tracker tracker;
        kleak::core::Event e;
        e.kind = kleak::core::EventKind::kmalloc;
        for (std::size_t i = 0; i < n; ++i) {
            e.ts_ns = i;
            e.ptr = 0xffff888000000000ULL + i * 64;
            e.call_site = 0xffffffff81000000ULL + (i % 512) * 64;
            e.bytes_alloc = 64;
            tracker.apply(e);
        }
        per_entry = static_cast<double>(tracker.memory_bytes()) / static_cast<double>(n);
    }
    state.counters["bytes_per_outstanding"] = per_entry;
}
BENCHMARK(BM_TrackerBytesPerOutstanding)->Unit(benchmark::kMillisecond)->Iterations(1);

}  // namespace

BENCHMARK_MAIN();
