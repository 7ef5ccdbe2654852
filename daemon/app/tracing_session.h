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
#include <string>
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
    // Rings replaced so far (grown, made big for a restart, back to size):
    // the BPF set stored with systemd must name the new ones.
    unsigned rings_replaced() const { return rings_replaced_; }
    // At a stop that leaves the programs attached, before the tail: each
    // CPU writes into a new, bigger ring (restart_ring_bytes()), so that
    // what the programs write while no kleakd runs (systemd starting the
    // next one: ~80 ms, an 8 MiB ring's worth at full rate here) fits; the
    // next kleakd puts it back to buffer_size once it has drained it
    // (fit_rings()). Returns the rings replaced; then store the set again.
    unsigned make_room_for_restart();

    // Run counts, run time and recursion misses of every attached program.
    std::vector<core::ProgramCost> program_costs() const;

private:
    // Pushes every batch, stops the readers, drains the rings once more.
    void final_drain();
    // CPU `cpu` writes into a new ring of `bytes` from now on; the old one
    // is retired (released at a later fit_rings()). "" or why not.
    std::string replace_ring(unsigned cpu, std::uint64_t bytes);
    // Every second: releases the rings retired before the last tick, grows
    // the rings of CPUs that came online, and puts adopted restart rings
    // back to buffer_size.
    void fit_rings();

    BpfTracer tracer_;
    std::unique_ptr<RingConsumer> consumer_;
    // From start() (or, adopting, from the process's start: HandedRings) to stop_and_drain().
    std::unique_ptr<RingReaders> readers_;
    HandedReading handed_reading_;
    bool drained_for_good_ = false;  // final_drain() ran: drain() does nothing
    EventLoop* loop_ = nullptr;           // start()'s, which watches the readers
    std::vector<std::uint64_t> drops_;
    std::optional<TimerFd> drain_timer_;
    std::optional<TimerFd> ring_timer_;  // fit_rings()
    unsigned rings_grown_ = 0;
    unsigned rings_replaced_ = 0;
    bool retired_since_tick_ = false;  // a ring was retired since fit_rings() last ran
    std::uint64_t failed_growths_ = 0;
    std::function<void(std::uint64_t)> on_drained_;
    std::uint64_t holdback_ns_ = 0;
    std::uint64_t failed_drains_ = 0;
};

// The ring each CPU gets through a restart (TracingSession::make_room_for_restart()):
// kRestartRingFactor times buffer_size, at most kRestartRoomBytes for all
// CPUs together (never less than buffer_size), a power of two.
inline constexpr std::uint64_t kRestartRingFactor = 4;
inline constexpr std::uint64_t kRestartRoomBytes = 256ull << 20;
std::uint64_t restart_ring_bytes(std::uint64_t buffer_size, unsigned cpus);

// Runs `loop` until SIGINT/SIGTERM on `signals` or, when `duration` is
// non-zero, until it has passed; calls on_tick() every `tick` (0: never).
void run_until_stopped(EventLoop& loop, SignalFd& signals, std::chrono::seconds duration,
                       std::chrono::milliseconds tick, const std::function<void()>& on_tick);

}  // namespace kleak
