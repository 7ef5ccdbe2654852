// Gives each free that carries no clock reading of its own (KLEAK_TS_LOWER_BOUND)
// the next reading on its CPU, before it is staged in the merge.
//
// Such a free happened between its CPU's previous reading (what its record
// carries) and the next record of its batch that has a reading of its own: an
// allocation, a free that read the clock, or the time mark that closes every
// batch holding such frees. It is staged at that next reading, the latest it
// can have happened, so that it never sorts before the allocation it frees,
// made on another CPU a moment before (a remote free, the common case); its
// window (Event::bytes_req) lets the tracker undo the other order: a pointer
// freed here and allocated again on another CPU inside the window
// (tracker.h, "displaced").
//
// Per CPU, in arrival order, so a batch's records are handed on in their own
// order. Marks are consumed here and never handed on.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "event.h"
#include "kleak_abi.h"

namespace kleak::core {

class StampWindows {
public:
    explicit StampWindows(unsigned cpu_count) : waiting_(std::max(1u, cpu_count)) {}

    // Whether a record of this kind and header flags waits for the next
    // reading of its CPU (also used on raw records: frame_order.cpp).
    static constexpr bool waits(EventKind kind, std::uint32_t flags) {
        return is_free(kind) && (flags & KLEAK_TS_LOWER_BOUND) != 0;
    }
    static bool waits(const Event& event) { return waits(event.kind, event.gfp_flags); }
    // Gives a waiting free the reading that closes its window.
    static void close_window(Event& free, std::uint64_t reading_ns) {
        // A reading older than the free's lower bound can only come from
        // damaged input: keep the lower bound, exact.
        if (reading_ns <= free.ts_ns) return;
        free.bytes_req = static_cast<std::uint32_t>(std::min<std::uint64_t>(reading_ns - free.ts_ns, kUnboundedWindow));
        free.ts_ns = reading_ns;
    }

    // Hands `event` (and the frees it closes the window of) to stage(const
    // Event&), in order, or keeps it until its window closes. `event.cpu`
    // selects the stream (the last one for a CPU beyond cpu_count).
    template <class Stage>
    void take(const Event& event, Stage&& stage) {
        std::vector<Event>& waiting = of(event.cpu);
        if (waits(event)) [[unlikely]] {
            waiting.push_back(event);
            return;
        }
        if (!waiting.empty()) close(waiting, event.ts_ns, stage);
        if (event.kind != EventKind::time_mark) stage(event);
    }

    // For a record that is not staged (printk with nothing to print to): its
    // reading still closes its CPU's window, so the frees' times do not
    // depend on whether printk is captured.
    template <class Stage>
    void reading_only(const Event& event, Stage&& stage) {
        std::vector<Event>& waiting = of(event.cpu);
        if (!waiting.empty()) close(waiting, event.ts_ns, stage);
    }

    // The frees of `cpu` still waiting, for a caller that closes windows in
    // its own buffer (Pipeline::on_frames): it takes them, and gives back
    // what it could not close.
    std::vector<Event>& of(std::uint16_t cpu) { return waiting_[std::min<std::size_t>(cpu, waiting_.size() - 1)]; }

    // End of input: frees still waiting (a batch cut short) are handed on at
    // their lower bound, window 0.
    template <class Stage>
    void close_all(Stage&& stage) {
        for (std::vector<Event>& waiting : waiting_) {
            for (const Event& e : waiting) stage(e);
            waiting.clear();
        }
    }

    std::size_t waiting() const {
        std::size_t n = 0;
        for (const auto& w : waiting_) n += w.size();
        return n;
    }

    void clear() {
        for (auto& w : waiting_) w.clear();
    }

private:
    template <class Stage>
    static void close(std::vector<Event>& waiting, std::uint64_t reading_ns, Stage& stage) {
        for (Event& e : waiting) {
            close_window(e, reading_ns);
            stage(e);
        }
        waiting.clear();
    }

    std::vector<std::vector<Event>> waiting_;
};

}  // namespace kleak::core
