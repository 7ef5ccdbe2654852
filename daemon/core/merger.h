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

    // End of input: release everything that is staged.
    void release_all(std::vector<Event>& out);

    std::uint64_t late() const { return late_; }
    std::size_t staged() const;
    unsigned cpu_count() const { return static_cast<unsigned>(queues_.size()); }

    // Forget staged records and counters (a fresh baseline).
    void reset();

private:
    struct Queue {
        std::vector<Event> events;
        bool sorted = true;  // stays true while records arrive in order
    };

    std::vector<Queue> queues_;
    std::uint64_t released_watermark_ = 0;
    bool released_any_ = false;
    std::uint64_t late_ = 0;
};

}  // namespace kleak::core
