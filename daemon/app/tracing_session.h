// Live tracing shared by `trace` and `record`: the BPF programs, the ring
// consumer, and one epoll loop that drains the rings on a timer (and when a
// ring passes half full), stopping on SIGINT/SIGTERM or a deadline.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <vector>

#include "app/event_loop.h"
#include "kernel/bpf_tracer.h"
#include "kernel/ring_consumer.h"

namespace kleak {

struct SessionTiming {
    std::chrono::milliseconds drain_period{100};
    // How far behind the start of a drain records are still considered
    // possibly in flight (reserved but not yet committed on some CPU).
    std::chrono::milliseconds holdback{10};
};

class TracingSession {
public:
    // `signals` must have been constructed before any thread started.
    TracingSession(const TracerOptions& options, RecordSink& sink, SignalFd& signals);

    unsigned cpu_count() const { return tracer_.cpu_count(); }
    const BpfTracer& tracer() const { return tracer_; }
    const RingConsumer& consumer() const { return consumer_; }

    // Runs until a signal or until `deadline_ns` (CLOCK_MONOTONIC, 0 = none).
    // After every drain calls on_drained(watermark): records older than the
    // watermark can no longer arrive. Every `tick` calls on_tick().
    void run(const SessionTiming& timing, std::uint64_t deadline_ns,
             const std::function<void(std::uint64_t watermark)>& on_drained,
             std::chrono::milliseconds tick, const std::function<void()>& on_tick);

    // Detaches the programs and drains what they left in the rings.
    void stop_and_drain();

    // Per-CPU drops; keeps the last good read if the map cannot be read.
    const std::vector<std::uint64_t>& drops();

private:
    BpfTracer tracer_;
    RingConsumer consumer_;
    SignalFd& signals_;
    std::vector<std::uint64_t> drops_;
};

}  // namespace kleak
