// A reader thread per CPU ring, pinned to its CPU, that copies the ring out
// (RingConsumer::spill) when the ring's producer wakes it and the ring is
// half full (the loop, woken at a quarter, is late), and then tells the loop
// through an eventfd.
//
// Why: the ring of CPU N fills only while CPU N runs its producers, and its
// reader can run exactly then. The loop that drains can be kept from running
// for longer than a ring lasts at full rate (~50-70 ms for 8 MiB): a long
// query, or, on a VM, the host descheduling the loop's vCPU (measured here:
// 100-110 ms at a time; every loss bench/compare.sh saw with the steal
// monitor came with one). The readers only copy: decoding, merging and
// tracking stay on the loop, which drains what they copied first. While the
// loop keeps up, readers only wake and sleep again.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "kernel/ring_consumer.h"
#include "kernel/unique_fd.h"
#include "kernel/wake_fd.h"

namespace kleak {

class RingReaders {
public:
    // One reader per ring of `consumer`; ring_fds[cpu] is CPU cpu's ring.
    // Throws StartupError if a thread, eventfd or epoll set cannot be made.
    // `eager`: nothing drains yet (a restarted kleakd still starting up,
    // kernel/handed_rings.h): copy whatever the ring holds, every
    // millisecond, until lazy() is called.
    RingReaders(RingConsumer& consumer, const std::vector<int>& ring_fds, bool eager = false);
    ~RingReaders();  // stops and joins the readers
    RingReaders(const RingReaders&) = delete;
    RingReaders& operator=(const RingReaders&) = delete;

    // Reader `cpu` watches `ring_fd` too: its CPU's new ring
    // (RingConsumer::replace_ring). False, errno set, if it cannot.
    bool watch_ring(unsigned cpu, int ring_fd);

    // A loop drains from now on: copy only when it falls behind.
    void lazy() { eager_.store(false, std::memory_order_relaxed); }
    bool eager() const { return eager_.load(std::memory_order_relaxed); }

    // Readable after a reader copied records out: lower it, then drain.
    WakeFd& notify() { return notify_; }

    // Readers not pinned to their CPU (offline at start, or since; each
    // tries again when woken off it): they still copy, from wherever the
    // scheduler runs them.
    unsigned unpinned() const { return unpinned_.load(std::memory_order_relaxed); }

private:
    void run(unsigned cpu, int epoll_fd);
    void stop();

    RingConsumer& consumer_;
    WakeFd notify_;
    WakeFd stop_;
    std::vector<UniqueFd> epolls_;
    std::atomic<unsigned> unpinned_{0};
    std::atomic<bool> eager_;
    std::vector<std::thread> threads_;
};

}  // namespace kleak
