// Live tracing: the BPF programs, the ring consumer, and the drain timer on
// the caller's epoll loop. Rings are drained every drain period, and early
// when a producer forces a wake-up because its ring passed a quarter full.
// The ring's reader thread (ring_readers.h) gets that wake-up too, and
// copies the ring out on its own CPU when the loop has not drained it by the
// time it is half full.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "kernel/event_loop.h"
#include "core/report.h"
#include "kernel/bpf_tracer.h"
#include "kernel/handed_rings.h"
#include "kernel/ring_consumer.h"
#include "kernel/ring_readers.h"

namespace kleak {

struct SessionTiming {
    std::chrono::milliseconds drain_period{100};
    // How far behind the start of a drain records are still considered
    // possibly in flight (reserved but not yet committed on some CPU).
    std::chrono::milliseconds holdback{10};
};

class TracingSession {
public:
    // `handed_over`: what a previous kleakd left in systemd's fd store
    // (BpfTracer). `handed_rings`: its rings, read since this process began
    // (kernel/handed_rings.h); their consumer and readers go on here when
    // the programs are adopted, else they are dropped.
    TracingSession(const TracerOptions& options, RecordSink& sink, Handover handed_over = {},
                   HandedRings handed_rings = {});

    unsigned cpu_count() const { return tracer_.cpu_count(); }
    const BpfTracer& tracer() const { return tracer_; }
    BpfTracer& tracer() { return tracer_; }
    const RingConsumer& consumer() const { return *consumer_; }
    // How the handed rings were read (HandedRings), when their early copies
    // were kept (the programs adopted); else all 0.
    const HandedReading& handed_reading() const { return handed_reading_; }
    // Ring readers that could not be pinned to their CPU (0 before start()).
    unsigned readers_unpinned() const { return readers_ ? readers_->unpinned() : 0; }

    // Drains on `loop` from now on. After every drain calls
    // on_drained(watermark): records older than the watermark can no longer
    // arrive.
    void start(EventLoop& loop, const SessionTiming& timing, std::function<void(std::uint64_t)> on_drained);

    // Drains now (also what the timer does).
    void drain();

    // Moves what the rings hold into the sink, without calling on_drained:
    // for work that holds the tracker's state while it runs long enough for
    // the rings to fill (reading kallsyms), which must not see it change.
    void drain_rings_only();

    // Detaches the programs and drains what they left in the rings.
    void stop_and_drain();
    // The same with the programs left attached, for the next kleakd to adopt
    // (systemd keeps their links): every CPU's batch is pushed and the rings
    // drained up to now; what the programs write afterwards stays in the
    // rings, past their consumer position, for the next process.
    void drain_for_handover();
    // After drain_for_handover(): readers copy the rings out again while this
    // process writes its image and final snapshot, and ring_tail() stops
    // them and puts what they copied in a memfd for the next process
    // (kernel/ring_tail.h; invalid, logged, if it cannot: then those records
    // are lost, and counted in the log).
    void keep_reading_for_handover();
    UniqueFd ring_tail();

    // Per-CPU drops; keeps the last good read if the map cannot be read.
    const std::vector<std::uint64_t>& drops();

    // Gives each CPU that came online since start its full ring (the
    // session does it every second; public for tests). Returns the rings grown.
    unsigned grow_rings_of_online_cpus();
    unsigned rings_grown() const { return rings_grown_; }

    // Run counts, run time and recursion misses of every attached program.
    std::vector<core::ProgramCost> program_costs() const;

private:
    // Pushes every batch, stops the readers, drains the rings once more.
    void final_drain();

    BpfTracer tracer_;
    std::unique_ptr<RingConsumer> consumer_;
    // From start() (or, adopting, from the process's start: HandedRings) to stop_and_drain().
    std::unique_ptr<RingReaders> readers_;
    HandedReading handed_reading_;
    bool drained_for_good_ = false;  // final_drain() ran: drain() does nothing
    EventLoop* loop_ = nullptr;           // start()'s, which watches the readers
    std::vector<std::uint64_t> drops_;
    std::optional<TimerFd> drain_timer_;
    std::optional<TimerFd> online_timer_;  // while some CPU has its small ring
    unsigned rings_grown_ = 0;
    std::uint64_t failed_growths_ = 0;
    std::function<void(std::uint64_t)> on_drained_;
    std::uint64_t holdback_ns_ = 0;
    std::uint64_t failed_drains_ = 0;
};

// Runs `loop` until SIGINT/SIGTERM on `signals` or, when `duration` is
// non-zero, until it has passed; calls on_tick() every `tick` (0: never).
void run_until_stopped(EventLoop& loop, SignalFd& signals, std::chrono::seconds duration,
                       std::chrono::milliseconds tick, const std::function<void()>& on_tick);

}  // namespace kleak
