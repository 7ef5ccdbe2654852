// The tracker on a second thread, for replay: the merging thread (decode,
// stage, merge) hands released records over in batches through a bounded
// queue, and this thread applies them to the pipeline's tracker in the same
// order. Tracking is the larger half of replay's work (hash-table misses), so
// on two CPUs the halves overlap; the result is identical, since the tracker
// sees exactly the records, in exactly the order, it would have on one thread.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "core/pipeline.h"

namespace kleak {

class TrackingThread final : public core::ReleaseHandoff {
public:
    // What the thread does with each batch: pipeline.track() unless a test
    // substitutes something.
    using TrackFn = std::function<void(std::span<const core::Event>)>;

    // Starts the thread and installs itself as `pipeline`'s release handoff.
    explicit TrackingThread(core::Pipeline& pipeline, TrackFn track = {});
    // finish(), if not done yet; an error it would throw is logged instead.
    ~TrackingThread() override;
    TrackingThread(const TrackingThread&) = delete;
    TrackingThread& operator=(const TrackingThread&) = delete;

    // Hands over the last partial batch, waits until every record is
    // tracked, and gives the pipeline back its own tracking. After this,
    // pipeline.tracker() is complete and safe to read. If tracking threw
    // (std::bad_alloc growing the table), the thread stopped there and
    // finish() rethrows that exception on the calling thread, unless room()
    // already has: it is thrown once.
    void finish();

    // core::ReleaseHandoff, on the merging thread. Once tracking has failed,
    // room() rethrows its exception, so the replay stops rather than merging
    // records nobody will track.
    std::span<core::Event> room() override;
    void filled(std::size_t n) override;

    // Records per batch: 768 KiB, so a batch in flight stays in L2/L3 between
    // the two threads, and the queue's lock is taken once per 16K records.
    static constexpr std::size_t kBatchRecords = 16 * 1024;
    // Batches filled but not yet tracked before the merging thread waits.
    static constexpr std::size_t kMaxQueued = 4;

private:
    using Batch = std::vector<core::Event>;
    void hand_over();  // the current batch, as far as it is filled
    void run();        // the tracking thread

    core::Pipeline& pipeline_;
    TrackFn track_;
    Batch current_;              // being filled by the merging thread
    std::size_t current_size_ = 0;

    std::mutex mutex_;
    std::condition_variable changed_;
    std::deque<Batch> queued_;  // filled, oldest first (each sized to its records)
    std::vector<Batch> spare_;  // tracked, for reuse
    bool done_ = false;         // no more batches will come
    std::exception_ptr failure_;  // what tracking threw; the thread has ended
    bool failure_reported_ = false;  // rethrown once already (merging thread only)
    bool finished_ = false;
    std::thread thread_;
};

}  // namespace kleak
