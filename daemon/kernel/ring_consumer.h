// Reads the per-CPU rings. For every committed sample it hands each record
// the sample holds (one today, several once BPF batches them), with the CPU it
// came from, to a RecordSink: no logging, no symbolization, no allocation
// beyond what the sink's copy needs.
//
// kleakd's own consumer rather than libbpf's ring_buffer: it maps each ring's
// data area once (ring_mapping.h), which halves the rings' share of RSS.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "core/record_batch.h"
#include "kernel/ring_mapping.h"

namespace kleak {

class RecordSink {
public:
    virtual ~RecordSink() = default;
    virtual void on_record(unsigned cpu, std::span<const std::byte> record) = 0;
};

class RingConsumer {
public:
    // Maps every ring. Throws StartupError if one cannot be mapped.
    RingConsumer(const std::vector<int>& ring_fds, RecordSink& sink);
    RingConsumer(const RingConsumer&) = delete;
    RingConsumer& operator=(const RingConsumer&) = delete;

    // Consumes everything committed in every ring, and first what spill()
    // copied out of it. Returns the number of records, or a negative errno.
    // One thread only: the one that owns the sink.
    int drain();

    // Copies what ring `cpu` holds into memory of the consumer's own, for
    // the next drain() to hand on, and frees that room in the ring: so that
    // a reader thread on that CPU (ring_readers.h) keeps the ring from
    // overflowing while the thread that drains cannot run. Stops once the
    // copies hold as many bytes as the ring (what does not fit stays in the
    // ring). Safe from any thread; returns the bytes taken from the ring
    // or a negative errno.
    std::int64_t spill(unsigned cpu);

    // Bytes ring `cpu` holds, committed or reserved, not yet consumed: read
    // without the lock, so a moment old.
    std::uint64_t backlog_bytes(unsigned cpu) const;
    std::size_t ring_bytes(unsigned cpu) const { return rings_.at(cpu)->mapping.size(); }

    std::size_t ring_count() const { return rings_.size(); }
    std::uint64_t records() const { return records_; }
    // The most bytes one ring held at a drain or spill: how close it came to overflowing.
    std::uint64_t peak_backlog_bytes() const { return peak_backlog_bytes_.load(std::memory_order_relaxed); }
    // Bytes spill() has copied out of the rings so far.
    std::uint64_t spilled_bytes() const { return spilled_bytes_.load(std::memory_order_relaxed); }

private:
    struct Ring {
        Ring(int fd, unsigned cpu) : mapping(fd, cpu) {}
        RingMapping mapping;
        // Held by whoever moves the ring's consumer position: drain() or
        // spill(). drain() hands records on while holding it; a reader
        // waits meanwhile, which only matters if the draining thread stops
        // right then.
        std::mutex lock;
        // Samples spill() copied out, oldest first: each a u32 size, 4
        // bytes of padding, the sample, padded to 8 bytes.
        std::vector<std::byte> spilled;
    };

    // Consumes one ring; returns the bytes consumed (ring headers and padding
    // included) or a negative errno.
    std::int64_t drain_ring(unsigned cpu, RingMapping& ring, std::uint64_t& records);
    // Hands on the records of the sample of `size` bytes at `pos`.
    std::uint64_t hand_on(unsigned cpu, const RingMapping& ring, unsigned long pos, std::size_t size);
    // Hands on what spill() copied out of `ring`, and forgets it.
    std::uint64_t hand_on_spilled(unsigned cpu, Ring& ring);
    void note_backlog(std::uint64_t bytes);

    RecordSink& sink_;
    std::vector<std::unique_ptr<Ring>> rings_;
    // The one record that wraps past a ring's end is copied here.
    std::array<std::byte, core::kMaxRecordBytes> bounce_{};
    std::uint64_t records_ = 0;
    std::atomic<std::uint64_t> peak_backlog_bytes_{0};
    std::atomic<std::uint64_t> spilled_bytes_{0};
};

}  // namespace kleak
