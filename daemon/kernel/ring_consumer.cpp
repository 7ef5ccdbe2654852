#include "kernel/ring_consumer.h"

#include "core/record_batch.h"

#include <linux/bpf.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstring>

namespace kleak {

namespace {

// The kernel's smp_store_release/smp_load_acquire pairs, as libbpf's
// ringbuf_process_ring (src/ringbuf.c) uses them:
// - producer_pos: the kernel publishes a reservation with a release store;
//   acquiring it makes the record header at the old position visible.
// - a record's len: the kernel clears BPF_RINGBUF_BUSY_BIT with xchg after
//   writing the record; acquiring len makes the record's bytes visible.
// - consumer_pos: released after the records are handed on, so the kernel
//   reuses the space only once we have stopped reading it.
template <class T>
T load_acquire(const T* word) {
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}
void store_release(unsigned long* word, unsigned long value) { __atomic_store_n(word, value, __ATOMIC_RELEASE); }

// A sample's place in the ring: its 8-byte header (u32 len with the busy and
// discard bits, u32 page offset), the sample, padding to 8 bytes.
constexpr unsigned long ring_footprint(std::uint32_t size) { return (size + BPF_RINGBUF_HDR_SZ + 7ul) & ~7ul; }

}  // namespace

void SampleBuffer::swap(SampleBuffer& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    std::swap(capacity_, other.capacity_);
    std::swap(idle_uses_, other.idle_uses_);
}

void SampleBuffer::clear_for_reuse() {
    const bool idle = capacity_ > (std::size_t{1} << 20) && size_ < capacity_ / 4;
    idle_uses_ = idle ? idle_uses_ + 1 : 0;
    size_ = 0;
    if (idle_uses_ >= kIdleUses) *this = SampleBuffer();
}

std::byte* SampleBuffer::extend(std::size_t n) {
    if (size_ + n > capacity_) {
        const std::size_t capacity = std::max({size_ + n, capacity_ * 2, std::size_t{64} * 1024});
        auto grown = std::make_unique_for_overwrite<std::byte[]>(capacity);
        if (size_ > 0) std::memcpy(grown.get(), data_.get(), size_);
        data_ = std::move(grown);
        capacity_ = capacity;
    }
    std::byte* at = data_.get() + size_;
    size_ += n;
    return at;
}

RingConsumer::RingConsumer(const std::vector<int>& ring_fds, RecordSink& sink) : sink_(sink) {
    rings_.reserve(ring_fds.size());
    for (std::size_t cpu = 0; cpu < ring_fds.size(); ++cpu)
        rings_.push_back(std::make_unique<Ring>(ring_fds[cpu], static_cast<unsigned>(cpu)));
}

int RingConsumer::drain() {
    std::uint64_t records = 0;
    int result = 0;
    for (std::size_t cpu = 0; cpu < rings_.size(); ++cpu) {
        Ring& ring = *rings_[cpu];
        const RingMapping& m = *ring.mapping;
        // Copied without the lock, which is taken only to move the consumer
        // position: if this thread is stopped mid-copy (a VM's vCPU taken
        // away by the host), the ring's reader is not kept waiting.
        const unsigned long start = load_acquire(m.consumer_pos());
        unsigned long end = start;
        std::uint64_t sample_bytes = 0;
        const std::int64_t error = copy_samples(m, start, SIZE_MAX, taking_, sample_bytes, end);
        {
            const std::lock_guard hold(ring.lock);
            if (load_acquire(m.consumer_pos()) == start) {
                // Nobody consumed meanwhile, so the kernel wrote nothing over
                // what was copied: it is good.
                if (end != start) store_release(m.consumer_pos(), end);
                if (error < 0) result = static_cast<int>(error);  // the other rings are still drained
            } else {
                taking_.clear();  // a reader took them meanwhile: its copies hold them
            }
            earlier_.swap(ring.copied);  // the ring keeps the buffer earlier_ had, empty
        }
        // What a reader copied out came first, then what was still in flight
        // into rings the CPU had before (almost always none).
        records += hand_on(static_cast<unsigned>(cpu), earlier_.bytes());
        if (!ring.retired.empty()) records += drain_retired(static_cast<unsigned>(cpu), ring);
        records += hand_on(static_cast<unsigned>(cpu), taking_.bytes());
        earlier_.clear_for_reuse();
        taking_.clear_for_reuse();
    }
    records_ += records;
    if (result < 0) return result;
    return static_cast<int>(std::min<std::uint64_t>(records, INT_MAX));
}

std::uint64_t RingConsumer::drain_retired(unsigned cpu, Ring& ring) {
    SampleBuffer stragglers;
    {
        const std::lock_guard hold(ring.lock);
        std::uint64_t sample_bytes = 0;
        for (const auto& old : ring.retired)
            take_samples(*old, SIZE_MAX, stragglers, sample_bytes);  // a damaged one: the rest waits
    }
    return hand_on(cpu, stragglers.bytes());
}

void RingConsumer::replace_ring(unsigned cpu, std::unique_ptr<RingMapping> mapping) {
    Ring& ring = *rings_.at(cpu);
    const std::lock_guard hold(ring.lock);
    // After what a reader copied out already, before anything the new ring gets.
    std::uint64_t sample_bytes = 0;
    take_samples(*ring.mapping, SIZE_MAX, ring.copied, sample_bytes);
    ring.retired.push_back(std::move(ring.mapping));
    ring.mapping = std::move(mapping);
}

void RingConsumer::release_retired(unsigned cpu) {
    Ring& ring = *rings_.at(cpu);
    const std::lock_guard hold(ring.lock);
    std::uint64_t sample_bytes = 0;
    for (const auto& old : ring.retired) take_samples(*old, SIZE_MAX, ring.copied, sample_bytes);
    ring.retired.clear();
}

std::size_t RingConsumer::ring_bytes(unsigned cpu) const {
    Ring& ring = *rings_.at(cpu);
    const std::lock_guard hold(ring.lock);
    return ring.mapping->size();
}

std::int64_t RingConsumer::spill(unsigned cpu) {
    Ring& ring = *rings_.at(cpu);
    const std::lock_guard hold(ring.lock);
    const RingMapping& m = *ring.mapping;
    std::uint64_t sample_bytes = 0;
    // Up to twice the ring by default: with the ring itself, three rings'
    // worth of time before anything is dropped (~200 ms for 8 MiB at full
    // rate here).
    const std::int64_t taken = take_samples(m, copy_limit() * m.size(), ring.copied, sample_bytes);
    spilled_bytes_.fetch_add(sample_bytes, std::memory_order_relaxed);
    return taken;
}

std::int64_t RingConsumer::take_samples(const RingMapping& m, std::size_t cap, SampleBuffer& out,
                                        std::uint64_t& sample_bytes) {
    const unsigned long start = load_acquire(m.consumer_pos());
    unsigned long end = start;
    const std::int64_t error = copy_samples(m, start, cap, out, sample_bytes, end);
    if (end != start) store_release(m.consumer_pos(), end);
    if (error < 0) return error;
    return static_cast<std::int64_t>(end - start);
}

unsigned long RingConsumer::take_copies(unsigned cpu, SampleBuffer& out) {
    Ring& ring = *rings_.at(cpu);
    out.clear();
    const std::lock_guard hold(ring.lock);
    out.swap(ring.copied);
    return load_acquire(ring.mapping->consumer_pos());
}

unsigned long RingConsumer::consumer_position(unsigned cpu) const {
    Ring& ring = *rings_.at(cpu);
    const std::lock_guard hold(ring.lock);
    return load_acquire(ring.mapping->consumer_pos());
}

bool RingConsumer::whole_copies(std::span<const std::byte> copies) {
    for (std::size_t at = 0; at < copies.size();) {
        std::uint32_t size = 0;
        if (copies.size() - at < 8) return false;
        std::memcpy(&size, copies.data() + at, sizeof size);
        const std::size_t footprint = 8 + ((size + 7ul) & ~7ul);
        if (footprint > copies.size() - at) return false;
        at += footprint;
    }
    return true;
}

bool RingConsumer::preload(unsigned cpu, std::span<const std::byte> copies) {
    if (!whole_copies(copies)) return false;  // hand_on() trusts the framing
    Ring& ring = *rings_.at(cpu);
    const std::lock_guard hold(ring.lock);
    if (!copies.empty()) std::memcpy(ring.copied.extend(copies.size()), copies.data(), copies.size());
    return true;
}

std::uint64_t RingConsumer::backlog_bytes(unsigned cpu) const {
    Ring& ring = *rings_.at(cpu);
    const std::lock_guard hold(ring.lock);
    const RingMapping& m = *ring.mapping;
    return load_acquire(m.producer_pos()) - load_acquire(m.consumer_pos());
}

void RingConsumer::note_backlog(std::uint64_t bytes) {
    std::uint64_t peak = peak_backlog_bytes_.load(std::memory_order_relaxed);
    while (bytes > peak && !peak_backlog_bytes_.compare_exchange_weak(peak, bytes, std::memory_order_relaxed)) {
    }
}

std::int64_t RingConsumer::copy_samples(const RingMapping& m, unsigned long from, std::size_t cap, SampleBuffer& out,
                                        std::uint64_t& sample_bytes, unsigned long& end) {
    const std::span<const std::byte> data = m.data();
    const unsigned long mask = m.size() - 1;
    unsigned long consumed = from;
    // Records committed while we copy are taken too: go round until a pass
    // finds nothing new (libbpf does the same).
    for (bool got_new = true; got_new;) {
        got_new = false;
        const unsigned long produced = load_acquire(m.producer_pos());
        note_backlog(produced - from);
        while (consumed < produced) {
            // Headers are 8-aligned in a ring of whole pages: never split.
            const auto* header = reinterpret_cast<const std::uint32_t*>(data.data() + (consumed & mask));
            const std::uint32_t len = load_acquire(header);
            // Reserved, not committed yet: what follows waits, in order, even
            // if it is committed already.
            if (len & BPF_RINGBUF_BUSY_BIT) {
                end = consumed;
                return 0;
            }
            const std::uint32_t size = len & ~std::uint32_t{BPF_RINGBUF_DISCARD_BIT};
            // The kernel never reserves more than the ring (__bpf_ringbuf_reserve);
            // a bigger length would make us read past the mapping.
            if (size > m.size() - BPF_RINGBUF_HDR_SZ) {
                end = consumed;
                return -EBADMSG;
            }
            // A discarded sample (bpf_ringbuf_discard) is skipped, not read.
            if (!(len & BPF_RINGBUF_DISCARD_BIT)) {
                const std::size_t footprint = 8 + ((size + 7ul) & ~7ul);
                if (out.size() + footprint > cap) {  // the rest stays in the ring
                    end = consumed;
                    return 0;
                }
                std::byte* copy = out.extend(footprint);
                std::memcpy(copy, &size, sizeof size);
                std::memset(copy + 4, 0, 4);
                const std::size_t offset = (consumed + BPF_RINGBUF_HDR_SZ) & mask;
                const std::size_t first = std::min<std::size_t>(size, data.size() - offset);
                std::memcpy(copy + 8, data.data() + offset, first);
                std::memcpy(copy + 8 + first, data.data(), size - first);  // what wrapped past the ring's end
                std::memset(copy + 8 + size, 0, footprint - 8 - size);     // padding to 8 bytes
                sample_bytes += size;
            }
            got_new = true;
            consumed += ring_footprint(size);
        }
    }
    end = consumed;
    return 0;
}

std::uint64_t RingConsumer::hand_on(unsigned cpu, std::span<const std::byte> copied) {
    std::uint64_t records = 0;
    auto to_sink = [this, cpu](std::span<const std::byte> record) { sink_.on_record(cpu, record); };
    for (std::size_t at = 0; at < copied.size();) {
        std::uint32_t size = 0;
        std::memcpy(&size, copied.data() + at, sizeof size);
        records += core::for_each_record(copied.subspan(at + 8, size), to_sink);
        at += 8 + ((size + 7ul) & ~7ul);
    }
    return records;
}

}  // namespace kleak
