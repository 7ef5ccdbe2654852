// Reads the per-CPU rings. For every committed sample it hands each record
// the sample holds (BPF batches ~100 per sample), with the CPU it came from,
// to a RecordSink: no logging, no symbolization.
//
// kleakd's own consumer rather than libbpf's ring_buffer: it maps each ring's
// data area once (ring_mapping.h), which halves the rings' share of RSS.
//
// Samples are copied out of a ring before their records are handed on: the
// ring's room is free again after a memcpy, and a ring reader
// (ring_readers.h) that must copy the ring out while the draining thread
// cannot run never waits for it (drain() holds the ring's lock only to move
// its consumer position).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "kernel/ring_mapping.h"

namespace kleak {

class RecordSink {
public:
    virtual ~RecordSink() = default;
    virtual void on_record(unsigned cpu, std::span<const std::byte> record) = 0;
};

// Bytes appended without being zeroed first (std::vector's resize would
// write every byte twice), reused from drain to drain.
class SampleBuffer {
public:
    // Room for n more bytes at the end, which the caller fills.
    std::byte* extend(std::size_t n);
    std::span<const std::byte> bytes() const { return {data_.get(), size_}; }
    std::size_t size() const { return size_; }
    std::size_t capacity() const { return capacity_; }
    void clear() { size_ = 0; }
    // Empties it for the next use. Its memory is kept while it is in use
    // (freeing and growing it again would fault its pages in at every burst:
    // measured, a sixth of the daemon's time at full rate), and given back
    // after kIdleUses uses in a row that needed less than a quarter of it
    // (after a stall has grown it, steady drains need about that much).
    void clear_for_reuse();
    void swap(SampleBuffer& other) noexcept;

    static constexpr unsigned kIdleUses = 16;

private:
    std::unique_ptr<std::byte[]> data_;
    std::size_t size_ = 0;
    std::size_t capacity_ = 0;
    unsigned idle_uses_ = 0;
};

class RingConsumer {
public:
    // Maps every ring. Throws StartupError if one cannot be mapped.
    RingConsumer(const std::vector<int>& ring_fds, RecordSink& sink);
    RingConsumer(const RingConsumer&) = delete;
    RingConsumer& operator=(const RingConsumer&) = delete;

    // Consumes everything committed in every ring, after what spill() copied
    // out of it. Returns the number of records, or a negative errno. One
    // thread only: the one that owns the sink.
    int drain();

    // Copies what ring `cpu` holds out of it, for the next drain() to hand
    // on, so that a reader thread on that CPU (ring_readers.h) keeps the ring
    // from overflowing while the draining thread cannot run. Stops once the
    // copies hold copy_limit() rings' worth (the rest stays in the ring).
    // Safe from any thread; returns the bytes taken from the ring (0 when the
    // copies are full) or a negative errno.
    std::int64_t spill(unsigned cpu);

    // How many rings' worth spill() may copy out of each ring before a drain
    // takes the copies: 2 while a loop drains; more while a restarted kleakd
    // reads the rings it was handed before it can drain (kernel/handed_rings.h).
    void set_copy_limit(unsigned rings) { copy_limit_.store(rings, std::memory_order_relaxed); }
    unsigned copy_limit() const { return copy_limit_.load(std::memory_order_relaxed); }
    static constexpr unsigned kDefaultCopyLimit = 2;

    // A stopping kleakd hands what its readers copied after its last drain
    // to the next one (kernel/ring_tail.h). take_copies() moves ring `cpu`'s
    // copies into `out` (emptied first) and returns the ring's consumer
    // position after them; any thread.
    unsigned long take_copies(unsigned cpu, SampleBuffer& out);
    // Ring `cpu`'s consumer position: where the copies end (a moment old).
    unsigned long consumer_position(unsigned cpu) const;
    // Puts a previous process's copies of ring `cpu` after those it has
    // already, before anything copied from now on. False, and nothing put,
    // if they are not whole copies.
    bool preload(unsigned cpu, std::span<const std::byte> copies);
    // Whether `copies` is a sequence of whole copies, as take_copies() gives.
    static bool whole_copies(std::span<const std::byte> copies);
    std::size_t ring_count() const { return rings_.size(); }

    // Bytes ring `cpu` holds, committed or reserved, not yet consumed: a
    // moment old.
    std::uint64_t backlog_bytes(unsigned cpu) const;
    std::size_t ring_bytes(unsigned cpu) const;

    // CPU `cpu` writes into `ring` from now on (its ring grew when it came
    // online; map it with RingMapping(fd, cpu), which throws StartupError,
    // and install it for the programs first): what its old ring holds is
    // copied out, to be handed on before the new ring's records; the old ring
    // stays mapped, and is drained before the new one, for records still in
    // flight into it. The draining thread only.
    void replace_ring(unsigned cpu, std::unique_ptr<RingMapping> ring);

    // Lets ring `cpu`'s retired rings go (replace_ring()): what reached them
    // since is copied out, to be handed on at the next drain, and they are
    // unmapped. For when no program can still write into them (the tracer
    // replaced them long enough ago). The draining thread only.
    void release_retired(unsigned cpu);

    std::uint64_t records() const { return records_; }
    // The most bytes one ring held when it was read: how close it came to overflowing.
    std::uint64_t peak_backlog_bytes() const { return peak_backlog_bytes_.load(std::memory_order_relaxed); }
    // Sample bytes spill() has copied out of the rings so far.
    std::uint64_t spilled_bytes() const { return spilled_bytes_.load(std::memory_order_relaxed); }

private:
    struct Ring {
        Ring(int fd, unsigned cpu) : mapping(std::make_unique<RingMapping>(fd, cpu)) {}
        // Changed by replace_ring() only, under `lock`: other threads read it
        // under the lock; the draining thread, which replaces it, need not.
        std::unique_ptr<RingMapping> mapping;
        // The CPU's earlier rings (replace_ring()), oldest first.
        std::vector<std::unique_ptr<RingMapping>> retired;
        // Guards the consumer position and `copied`. spill() holds it while
        // it copies (a reader stopped mid-copy stops its own CPU's producer
        // too); drain() copies first and takes it only to check that nobody
        // consumed meanwhile and to move the position.
        std::mutex lock;
        // Samples copied out and not yet handed on, oldest first: each a u32
        // size, 4 bytes of padding, the sample, padded to 8 bytes.
        SampleBuffer copied;
    };

    // Appends the committed samples of ring `m` from position `from` to `out`
    // until it holds `cap` bytes; sets `end` to the position after the last
    // one taken. Moves nothing: the caller, holding the ring's lock, moves
    // the consumer position to `end`. Returns 0 or -EBADMSG (a damaged
    // header at `end`; what came before it is in `out`).
    std::int64_t copy_samples(const RingMapping& m, unsigned long from, std::size_t cap, SampleBuffer& out,
                              std::uint64_t& sample_bytes, unsigned long& end);
    // copy_samples() from `m`'s consumer position, then moves that position
    // past what was copied: the caller holds the ring's lock. Returns the
    // bytes taken from the ring, or -EBADMSG (what came before the damage is
    // taken and in `out`).
    std::int64_t take_samples(const RingMapping& m, std::size_t cap, SampleBuffer& out,
                              std::uint64_t& sample_bytes);
    // Records that reached a retired ring of `ring` after replace_ring():
    // consumed and handed on.
    std::uint64_t drain_retired(unsigned cpu, Ring& ring);
    // Hands on the records of copied samples.
    std::uint64_t hand_on(unsigned cpu, std::span<const std::byte> copied);
    void note_backlog(std::uint64_t bytes);

    RecordSink& sink_;
    std::vector<std::unique_ptr<Ring>> rings_;
    // drain()'s: what it copied out of a ring itself, and what a reader had
    // (swapped out of the ring under its lock).
    SampleBuffer taking_;
    SampleBuffer earlier_;
    std::uint64_t records_ = 0;
    std::atomic<std::uint64_t> peak_backlog_bytes_{0};
    std::atomic<std::uint64_t> spilled_bytes_{0};
    std::atomic<unsigned> copy_limit_{kDefaultCopyLimit};
};

}  // namespace kleak
