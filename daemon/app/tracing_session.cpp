#include "app/tracing_session.h"

#include <spdlog/spdlog.h>

#include <cstring>

#include "kernel/host_info.h"

namespace kleak {

TracingSession::TracingSession(const TracerOptions& options, RecordSink& sink, SignalFd& signals)
    : tracer_(options), consumer_(tracer_.ring_fds(), sink), signals_(signals), drops_(tracer_.cpu_count(), 0) {}

void TracingSession::run(const SessionTiming& timing, std::uint64_t deadline_ns,
                         const std::function<void(std::uint64_t)>& on_drained, std::chrono::milliseconds tick,
                         const std::function<void()>& on_tick) {
    EventLoop loop;
    TimerFd drain_timer(timing.drain_period);
    TimerFd tick_timer(tick);
    const std::uint64_t holdback_ns = static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(timing.holdback).count());
    std::uint64_t failed_drains = 0;

    auto drain = [&]() {
        const std::uint64_t started = monotonic_now_ns();
        const int n = consumer_.drain();
        if (n < 0 && failed_drains++ % 1000 == 0)  // rate-limited: once per 1000 failures
            spdlog::warn("draining the rings failed: {} ({} times so far)", std::strerror(-n), failed_drains);
        on_drained(started > holdback_ns ? started - holdback_ns : 0);
        if (deadline_ns != 0 && started >= deadline_ns) loop.stop();
    };

    // A ring fd polls readable whenever it holds any data, so level-triggered
    // watching would spin; edge-triggered, it fires only when a producer
    // forces a wake-up (its ring passed half full), which is the point.
    for (const int fd : tracer_.ring_fds()) loop.watch(fd, drain, EventLoop::Trigger::edge);
    loop.watch(drain_timer.fd(), [&]() {
        drain_timer.take();
        drain();
    });
    loop.watch(tick_timer.fd(), [&]() {
        tick_timer.take();
        on_tick();
    });
    loop.watch(signals_.fd(), [&]() {
        if (const int sig = signals_.take(); sig != 0) {
            spdlog::info("{} received, stopping", strsignal(sig));
            loop.stop();
        }
    });
    loop.run();
}

void TracingSession::stop_and_drain() {
    tracer_.detach();
    const int n = consumer_.drain();
    if (n < 0) spdlog::warn("draining the rings after detach failed: {}", std::strerror(-n));
}

const std::vector<std::uint64_t>& TracingSession::drops() {
    if (auto now = tracer_.read_drops(); !now.empty()) drops_ = std::move(now);
    return drops_;
}

}  // namespace kleak
