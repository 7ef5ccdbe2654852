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
        std::int64_t drained = 0;
        {
            const std::lock_guard hold(ring.lock);
            std::uint64_t ignored = 0;
            drained = copy_out(ring, SIZE_MAX, ignored);
            taking_.swap(ring.copied);  // the ring keeps the buffer taking_ had, empty
        }
        // What a reader copied out comes first: it came first.
        records += hand_on(static_cast<unsigned>(cpu), taking_.bytes());
        // Kept while the rings are busy; given back once a drain finds it
        // much larger than what it carried (a burst has passed).
        if (taking_.capacity() > (std::size_t{1} << 20) && taking_.size() < taking_.capacity() / 8) {
            taking_.release();
        } else {
            taking_.clear();
        }
        if (drained < 0) result = static_cast<int>(drained);  // the other rings are still drained
    }
    records_ += records;
    if (result < 0) return result;
    return static_cast<int>(std::min<std::uint64_t>(records, INT_MAX));
}

std::int64_t RingConsumer::spill(unsigned cpu) {
    Ring& ring = *rings_.at(cpu);
    const std::lock_guard hold(ring.lock);
    std::uint64_t sample_bytes = 0;
    const std::int64_t taken = copy_out(ring, ring.mapping.size(), sample_bytes);
    spilled_bytes_.fetch_add(sample_bytes, std::memory_order_relaxed);
    return taken;
}

std::uint64_t RingConsumer::backlog_bytes(unsigned cpu) const {
    const RingMapping& m = rings_.at(cpu)->mapping;
    return load_acquire(m.producer_pos()) - load_acquire(m.consumer_pos());
}

void RingConsumer::note_backlog(std::uint64_t bytes) {
    std::uint64_t peak = peak_backlog_bytes_.load(std::memory_order_relaxed);
    while (bytes > peak && !peak_backlog_bytes_.compare_exchange_weak(peak, bytes, std::memory_order_relaxed)) {
    }
}

std::int64_t RingConsumer::copy_out(Ring& ring, std::size_t cap, std::uint64_t& sample_bytes) {
    const RingMapping& m = ring.mapping;
    const std::span<const std::byte> data = m.data();
    const unsigned long mask = m.size() - 1;
    const unsigned long started = load_acquire(m.consumer_pos());
    unsigned long consumed = started;
    std::int64_t error = 0;
    // Records committed while we copy are taken too: go round until a pass
    // finds nothing new (libbpf does the same).
    for (bool got_new = true; got_new && error == 0;) {
        got_new = false;
        const unsigned long produced = load_acquire(m.producer_pos());
        note_backlog(produced - started);
        while (consumed < produced) {
            // Headers are 8-aligned in a ring of whole pages: never split.
            const auto* header = reinterpret_cast<const std::uint32_t*>(data.data() + (consumed & mask));
            const std::uint32_t len = load_acquire(header);
            // Reserved, not committed yet: what follows waits, in order, even
            // if it is committed already.
            if (len & BPF_RINGBUF_BUSY_BIT) {
                got_new = false;
                break;
            }
            const std::uint32_t size = len & ~std::uint32_t{BPF_RINGBUF_DISCARD_BIT};
            // The kernel never reserves more than the ring (__bpf_ringbuf_reserve);
            // a bigger length would make us read past the mapping.
            if (size > m.size() - BPF_RINGBUF_HDR_SZ) {
                error = -EBADMSG;
                break;
            }
            // A discarded sample (bpf_ringbuf_discard) is skipped, not read.
            if (!(len & BPF_RINGBUF_DISCARD_BIT)) {
                const std::size_t footprint = 8 + ((size + 7ul) & ~7ul);
                if (ring.copied.size() + footprint > cap) break;  // the rest stays in the ring
                std::byte* out = ring.copied.extend(footprint);
                std::memcpy(out, &size, sizeof size);
                std::memset(out + 4, 0, 4);
                std::memset(out + 8 + size, 0, footprint - 8 - size);  // padding to 8 bytes
                const std::size_t offset = (consumed + BPF_RINGBUF_HDR_SZ) & mask;
                const std::size_t first = std::min<std::size_t>(size, data.size() - offset);
                std::memcpy(out + 8, data.data() + offset, first);
                std::memcpy(out + 8 + first, data.data(), size - first);  // what wrapped past the ring's end
                sample_bytes += size;
            }
            got_new = true;
            consumed += ring_footprint(size);
        }
    }
    // Released once, after the copies: the kernel reuses the room only then.
    if (consumed != started) store_release(m.consumer_pos(), consumed);
    if (error != 0) return error;
    return static_cast<std::int64_t>(consumed - started);
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
