#include "app/tracing_session.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>

#include "core/sizes.h"
#include "kernel/host_info.h"
#include "kernel/ring_mapping.h"
#include "kernel/ring_tail.h"

namespace kleak {

TracingSession::TracingSession(const TracerOptions& options, RecordSink& sink, Handover handed_over,
                               HandedRings handed_rings)
    : tracer_(options, std::move(handed_over)), drops_(tracer_.cpu_count(), 0) {
    // The adopted rings are the handed ones (handover_fits() checked each is
    // the one the programs write into): what was copied of them goes on.
    if (tracer_.continuity() == Continuity::adopted && handed_rings.reading() &&
        handed_rings.ring_count() == tracer_.ring_fds().size()) {
        consumer_ = handed_rings.take_consumer();
        readers_ = handed_rings.take_readers();
        handed_reading_ = handed_rings.reading_so_far();
    } else {
        consumer_ = std::make_unique<RingConsumer>(tracer_.ring_fds(), sink);
    }
}

void TracingSession::start(EventLoop& loop, const SessionTiming& timing,
                           std::function<void(std::uint64_t)> on_drained) {
    on_drained_ = std::move(on_drained);
    holdback_ns_ = static_cast<std::uint64_t>(std::chrono::nanoseconds(timing.holdback).count());
    drain_timer_.emplace(timing.drain_period);
    loop.watch(drain_timer_->fd(), [this]() {
        drain_timer_->take();
        drain();
    });
    // A ring fd polls readable whenever it holds any data, so level-triggered
    // watching would spin; edge-triggered, it fires only when a producer
    // forces a wake-up (its ring passed a quarter full), which is the point.
    for (const int fd : tracer_.ring_fds())
        loop.watch(
            fd, [this]() { drain(); }, EventLoop::Trigger::edge);
    // The same wake-up reaches the ring's reader, which copies the ring out
    // if the loop falls behind, and then wakes the loop.
    if (!readers_) readers_ = std::make_unique<RingReaders>(*consumer_, tracer_.ring_fds());
    loop_ = &loop;
    loop.watch(readers_->notify().fd(), [this]() {
        readers_->notify().lower();
        drain();
    });
    // CPUs offline at start have a small ring (BpfTracer) until they come
    // online; rings adopted from a restart are bigger until drained.
    ring_timer_.emplace(std::chrono::seconds(1));
    loop.watch(ring_timer_->fd(), [this]() {
        ring_timer_->take();
        fit_rings();
    });
}

std::string TracingSession::replace_ring(unsigned cpu, std::uint64_t bytes) {
    // Mapped, then installed for the programs, then read: a failure leaves
    // the CPU writing into its ring, still drained.
    UniqueFd ring = tracer_.make_ring(bytes);
    if (!ring) return std::string("creating it failed: ") + std::strerror(errno);
    std::unique_ptr<RingMapping> mapping;
    try {
        mapping = std::make_unique<RingMapping>(ring.get(), cpu);
    } catch (const std::exception& e) {
        return e.what();
    }
    const int fd = ring.get();
    if (const int err = tracer_.install_ring(cpu, std::move(ring), bytes); err != 0)
        return std::string("installing it failed: ") + std::strerror(-err);
    consumer_->replace_ring(cpu, std::move(mapping));
    try {
        if (loop_ != nullptr) loop_->watch(fd, [this]() { drain(); }, EventLoop::Trigger::edge);
    } catch (const std::exception& e) {
        spdlog::warn("the loop cannot watch CPU {}'s new ring ({}): it is drained on the timer only", cpu, e.what());
    }
    if (readers_ && !readers_->watch_ring(cpu, fd))
        spdlog::warn("the reader of CPU {} cannot watch its new ring: {}", cpu, std::strerror(errno));
    ++rings_replaced_;
    retired_since_tick_ = true;
    return {};
}

unsigned TracingSession::grow_rings_of_online_cpus() {
    const std::vector<unsigned> small = tracer_.small_ring_cpus();
    if (small.empty()) return 0;
    const std::optional<std::vector<unsigned>> online = online_cpus();
    if (!online) return 0;
    unsigned grown = 0;
    for (const unsigned cpu : small) {
        if (!std::binary_search(online->begin(), online->end(), cpu)) continue;
        if (const std::string failure = replace_ring(cpu, tracer_.buffer_size()); !failure.empty()) {
            // Retried each second.
            if (failed_growths_++ % 60 == 0)
                spdlog::warn("CPU {} is online but its ring cannot grow to {}: {}; it drops what its small ring "
                             "cannot hold ({} failures)",
                             cpu, core::format_size(tracer_.buffer_size()), failure, failed_growths_);
            continue;
        }
        spdlog::info("CPU {} came online: its ring grew from {} to {}", cpu, core::format_size(kOfflineRingBytes),
                     core::format_size(tracer_.buffer_size()));
        ++rings_grown_;
        ++grown;
    }
    return grown;
}

std::uint64_t restart_ring_bytes(std::uint64_t buffer_size, unsigned cpus) {
    const std::uint64_t share = kRestartRoomBytes / std::max(cpus, 1u);
    const std::uint64_t want = std::min(kRestartRingFactor * buffer_size, std::max(buffer_size, share));
    std::uint64_t bytes = buffer_size;
    while (bytes * 2 <= want) bytes *= 2;  // rings are powers of two
    return bytes;
}

unsigned TracingSession::make_room_for_restart() {
    const std::uint64_t bytes = restart_ring_bytes(tracer_.buffer_size(), tracer_.cpu_count());
    if (bytes <= tracer_.buffer_size()) return 0;
    unsigned made = 0;
    std::string failures;
    for (unsigned cpu = 0; cpu < tracer_.cpu_count(); ++cpu) {
        if (tracer_.ring_bytes()[cpu] != tracer_.buffer_size()) continue;  // an offline CPU's small ring
        if (const std::string failure = replace_ring(cpu, bytes); !failure.empty())
            failures += fmt::format("{}CPU {}: {}", failures.empty() ? "" : "; ", cpu, failure);
        else
            ++made;
    }
    if (!failures.empty())
        spdlog::warn("some CPUs keep their {} ring through the restart ({})", core::format_size(tracer_.buffer_size()),
                     failures);
    if (made > 0)
        spdlog::info("{} CPUs write into a {} ring until the next kleakd reads it (then {} again)", made,
                     core::format_size(bytes), core::format_size(tracer_.buffer_size()));
    return made;
}

void TracingSession::fit_rings() {
    // Rings retired at an earlier tick: every program that looked one up
    // has long returned (they run in microseconds), so what reached them is
    // all there.
    if (const std::vector<int> retired = tracer_.retired_ring_fds(); !retired_since_tick_ && !retired.empty()) {
        for (const int fd : retired)
            if (loop_ != nullptr) loop_->unwatch(fd);
        for (unsigned cpu = 0; cpu < tracer_.cpu_count(); ++cpu) consumer_->release_retired(cpu);
        tracer_.release_retired_rings();
    }
    retired_since_tick_ = false;
    grow_rings_of_online_cpus();
    // A ring made big for a restart (make_room_for_restart()), adopted: back
    // to the configured size once the early copies are drained.
    if (readers_ && readers_->eager()) return;
    for (unsigned cpu = 0; cpu < tracer_.cpu_count(); ++cpu) {
        const std::uint64_t had = tracer_.ring_bytes()[cpu];
        if (had <= tracer_.buffer_size()) continue;
        if (const std::string failure = replace_ring(cpu, tracer_.buffer_size()); !failure.empty()) {
            if (failed_growths_++ % 60 == 0)
                spdlog::warn("CPU {}'s {} ring from the restart cannot go back to {}: {}", cpu,
                             core::format_size(had), core::format_size(tracer_.buffer_size()), failure);
            continue;
        }
        spdlog::info("CPU {}'s ring is back from {} (the restart's) to {}", cpu, core::format_size(had),
                     core::format_size(tracer_.buffer_size()));
    }
}

void TracingSession::drain() {
    if (drained_for_good_) return;
    const std::uint64_t started = monotonic_now_ns();
    // Batches still held per CPU in BPF hold records older than `started`;
    // only CPUs whose batch holds records are flushed (see BpfTracer).
    drain_rings_only();
    if (on_drained_) on_drained_(started > holdback_ns_ ? started - holdback_ns_ : 0);
}

void TracingSession::drain_rings_only() {
    // After the last drain the rings' records are the next process's (or,
    // detached, there are none): a late caller must not consume them.
    if (drained_for_good_) return;
    tracer_.flush_batches();
    const int n = consumer_->drain();
    // The first drain took the handed rings' early copies: the readers
    // copy only when the loop falls behind again, as in any session.
    if (readers_ && readers_->eager()) {
        readers_->lazy();
        consumer_->set_copy_limit(RingConsumer::kDefaultCopyLimit);
    }
    if (n < 0 && failed_drains_++ % 1000 == 0)  // rate-limited: once per 1000 failures
        spdlog::warn("draining the rings failed: {} ({} times so far)", std::strerror(-n), failed_drains_);
}

void TracingSession::stop_and_drain() {
    tracer_.detach();
    final_drain();
}

void TracingSession::drain_for_handover() { final_drain(); }

void TracingSession::keep_reading_for_handover() {
    consumer_->set_copy_limit(HandedRings::copy_limit(consumer_->ring_bytes(0)));
    try {
        readers_ = std::make_unique<RingReaders>(*consumer_, tracer_.ring_fds(), /*eager=*/true);
    } catch (const std::exception& e) {
        spdlog::warn("the rings are not read while the state is stored ({}): the next kleakd reads them", e.what());
    }
}

UniqueFd TracingSession::ring_tail() {
    if (!readers_) return UniqueFd();
    // With the copies: what was still in flight into the rings
    // make_room_for_restart() retired (the image and snapshot took long enough
    // for every such write to end).
    for (unsigned cpu = 0; cpu < tracer_.cpu_count(); ++cpu) consumer_->release_retired(cpu);
    RingTailWriter tail;
    tail.append(*consumer_);  // the bulk, while the readers still copy
    readers_.reset();
    UniqueFd fd = tail.finish(*consumer_);
    if (!fd)
        spdlog::warn("the ring tail cannot be handed over ({}): {} bytes of records read after the last drain are lost",
                     tail.error(), tail.bytes());
    else
        spdlog::info("ring tail: {} read after the last drain, handed to the next kleakd",
                     core::format_size(tail.bytes()));
    return fd;
}

void TracingSession::final_drain() {
    // Every CPU: nothing will age a batch or drain it again in this process.
    tracer_.flush_all_batches();
    // The readers go on copying until now (detaching can take a while);
    // stopped before the last drain, none copies after it.
    if (readers_) {
        if (loop_ != nullptr) loop_->unwatch(readers_->notify().fd());
        readers_.reset();
    }
    const int n = consumer_->drain();
    drained_for_good_ = true;
    if (n < 0) spdlog::warn("the last drain of the rings failed: {}", std::strerror(-n));
}

const std::vector<std::uint64_t>& TracingSession::drops() {
    if (auto now = tracer_.read_drops(); !now.empty()) drops_ = std::move(now);
    return drops_;
}

std::vector<core::ProgramCost> TracingSession::program_costs() const {
    std::vector<core::ProgramCost> costs;
    for (const ProgramStats& p : tracer_.program_stats())
        costs.push_back({p.name, p.run_cnt, p.run_time_ns, p.recursion_misses});
    return costs;
}

void run_until_stopped(EventLoop& loop, SignalFd& signals, std::chrono::seconds duration,
                       std::chrono::milliseconds tick, const std::function<void()>& on_tick) {
    std::optional<TimerFd> tick_timer;
    if (tick.count() > 0) {
        tick_timer.emplace(tick);
        loop.watch(tick_timer->fd(), [&]() {
            tick_timer->take();
            on_tick();
        });
    }
    std::optional<TimerFd> deadline;
    if (duration.count() > 0) {
        deadline.emplace(duration, TimerFd::Repeat::once);
        loop.watch(deadline->fd(), [&]() { loop.stop(); });
    }
    loop.watch(signals.fd(), [&]() {
        if (const int sig = signals.take(); sig != 0) {
            spdlog::info("{} received, stopping", strsignal(sig));
            loop.stop();
        }
    });
    loop.run();
    loop.unwatch(signals.fd());
    if (tick_timer) loop.unwatch(tick_timer->fd());
    if (deadline) loop.unwatch(deadline->fd());
}

}  // namespace kleak
