// Time-ordered merge of the per-CPU record streams.
//
// Records reach user space in ring order, not time order: a kfree on CPU1 can
// be read before the kmalloc on CPU0 that it frees, and even one CPU's ring can
// hold a record committed after a later one (an IRQ interrupted the program
// between bpf_ktime_get_ns() and submit). So records are staged per CPU and
// released in timestamp order only up to a watermark the caller chooses
// (live: "start of this drain minus a holdback"; replay: what every input has
// passed). A record staged with a timestamp at or behind a watermark already
// released is `late`: it is counted, and still released (first) next time.
//
// A release can also be taken in slices (the daemon answers queries between
// them): begin_release(W) fixes what it covers, release_some(n) hands on the
// next n records of it. The slices of one release, put end to end, are
// exactly what release_until(W) would have handed on.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "event.h"

namespace kleak::core {

class Merger {
public:
    explicit Merger(unsigned cpu_count);

    void stage(const Event& event);  // inline below: once per record
    // stage() of each record in turn, for records that all came from one CPU
    // (events[0].cpu), at the cost of one copy.
    void stage_from_one_cpu(std::span<const Event> events);

    // Appends to `out`, in timestamp order (ties by CPU, then by arrival), every
    // staged record with ts_ns <= watermark. Watermarks never go backwards: a
    // smaller one than before releases nothing new. A release in progress
    // (begin_release) is finished first.
    void release_until(std::uint64_t watermark, std::vector<Event>& out);

    // End of input: release everything that is staged.
    void release_all(std::vector<Event>& out);

    // Sliced release. begin_release(W) (only when !releasing()) covers every
    // record staged now with ts_ns <= W, and raises the lateness bar to W at
    // once, as a one-shot release would. release_some(out) writes the next at
    // most out.size() of them into `out` (a prefix of the merged order) and
    // returns how many. A record staged while a release is in progress is not
    // part of it: it goes out with the next release (late if at or behind W),
    // just as if it had been staged after a one-shot release_until(W).
    void begin_release(std::uint64_t watermark);
    std::size_t release_some(std::span<Event> out);
    bool releasing() const { return releasing_; }
    std::size_t release_left() const { return left_; }

    std::uint64_t late() const { return late_; }
    std::size_t staged() const;
    // Events the staging queues can hold without growing (their memory).
    std::size_t staged_capacity() const;
    unsigned cpu_count() const { return static_cast<unsigned>(queues_.size()); }

    // Forget staged records, a release in progress and counters (a fresh
    // baseline).
    void reset();

    // A queue whose capacity stays over kShrinkFactor times its recent demand
    // (the most it held at a release, decaying by 1/8 per release) is cut to
    // twice that demand: a burst's staging memory is returned within about ten
    // releases (a second of live drains), while a steady rate keeps its
    // capacity and does not reallocate every drain.
    static constexpr std::size_t kShrinkFactor = 4;
    static constexpr std::size_t kMinShrinkCapacity = 4096;  // events; below this, not worth a reallocation

    // How far back from a queue's end an out-of-order record is inserted in
    // place; one that belongs further back makes the queue sort at release.
    static constexpr std::size_t kInsertWindow = 256;

private:
    struct Queue;
    void stage_out_of_order(Queue& q, const Event& event);
    void finish_release();
    void shrink_if_oversized(std::size_t queue);
    std::size_t merge_two(std::size_t a, std::size_t b, Event* out, std::size_t room);
    std::size_t merge_many(Event* out, std::size_t room);

    // A queue's released records are dropped by moving `head`, and only cut
    // off the vector once they outnumber the records still held: erasing them
    // at every release moved the whole holdback each time (replay in 256 KiB
    // slices spent 22 % of its time in memmove). Indices are into `events`.
    struct Queue {
        std::vector<Event> events;   // [head, size): staged, not yet released
        std::size_t head = 0;
        bool sorted = true;          // stays true while records arrive in order
        std::size_t ready = 0;       // records of the release in progress end here
        std::size_t pos = 0;         // ... and are handed on up to here
        std::size_t demand = 0;      // decaying peak of events.size() at a release
        std::size_t held() const { return events.size() - head; }
    };

    std::vector<Queue> queues_;
    std::uint64_t released_watermark_ = 0;
    bool released_any_ = false;
    bool releasing_ = false;
    std::size_t left_ = 0;  // records of the release in progress not yet handed on
    std::uint64_t late_ = 0;
};

inline void Merger::stage(const Event& event) {
    if (released_any_ && event.ts_ns <= released_watermark_) ++late_;
    // A record from a CPU we were not told about (hot-plugged CPU, corrupt
    // recording) still gets merged: it goes to the last queue rather than
    // being dropped.
    Queue& q = queues_[std::min<std::size_t>(event.cpu, queues_.size() - 1)];
    if (q.held() > 0 && event.ts_ns < q.events.back().ts_ns) {
        stage_out_of_order(q, event);
        return;
    }
    q.events.push_back(event);
}

}  // namespace kleak::core
