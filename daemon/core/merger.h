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
#pragma once

#include <cstdint>
#include <vector>

#include "event.h"

namespace kleak::core {

class Merger {
public:
    explicit Merger(unsigned cpu_count);

    void stage(const Event& event);

    // Appends to `out`, in timestamp order (ties by CPU, then by arrival), every
    // staged record with ts_ns <= watermark. Watermarks never go backwards: a
    // smaller one than before releases nothing new.
    void release_until(std::uint64_t watermark, std::vector<Event>& out);
    // The same, handing each released record to sink(const Event&) in order
    // instead of copying it out (the pipeline applies them directly).
    template <class Sink>
    void release_until(std::uint64_t watermark, Sink&& sink);

    // End of input: release everything that is staged.
    void release_all(std::vector<Event>& out);

    std::uint64_t late() const { return late_; }
    std::size_t staged() const;
    unsigned cpu_count() const { return static_cast<unsigned>(queues_.size()); }

    // Forget staged records and counters (a fresh baseline).
    void reset();

private:
    std::size_t prepare_release(std::uint64_t& watermark);  // sorts, sizes ready_, returns their sum
    void finish_release(std::uint64_t watermark);

    struct Queue {
        std::vector<Event> events;
        bool sorted = true;  // stays true while records arrive in order
    };

    std::vector<Queue> queues_;
    std::vector<std::size_t> ready_;  // per queue: records at or below the watermark
    std::vector<std::size_t> pos_;    // per queue: records already released
    std::uint64_t released_watermark_ = 0;
    bool released_any_ = false;
    std::uint64_t late_ = 0;
};

template <class Sink>
void Merger::release_until(std::uint64_t watermark, Sink&& sink) {
    std::size_t left = prepare_release(watermark);
    // K-way merge of the ready prefixes. CPU counts are small (tens to
    // hundreds), so a linear scan for the two smallest heads beats a heap's
    // bookkeeping. Order is (timestamp, CPU): ties go to the lower CPU.
    // "No candidate" is tracked by index, not by a UINT64_MAX timestamp
    // sentinel: a record may legitimately carry that timestamp.
    const std::size_t n = queues_.size();
    const std::size_t none = n;
    while (left > 0) {
        std::size_t best = none, next = none;
        std::uint64_t best_ts = 0, next_ts = 0;
        for (std::size_t i = 0; i < n; ++i) {
            if (pos_[i] >= ready_[i]) continue;
            const std::uint64_t ts = queues_[i].events[pos_[i]].ts_ns;
            if (best == none || ts < best_ts) {
                next = best;
                next_ts = best_ts;
                best = i;
                best_ts = ts;
            } else if (next == none || ts < next_ts) {
                next = i;
                next_ts = ts;
            }
        }
        // Release the whole run of `best` that stays ahead of the next head.
        const auto& events = queues_[best].events;
        const std::size_t end = ready_[best];
        std::size_t p = pos_[best];
        do {
            sink(events[p]);
            ++p;
        } while (p < end && (next == none || events[p].ts_ns < next_ts || (events[p].ts_ns == next_ts && best < next)));
        left -= p - pos_[best];
        pos_[best] = p;
    }
    finish_release(watermark);
}

}  // namespace kleak::core
