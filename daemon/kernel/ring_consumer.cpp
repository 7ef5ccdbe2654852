#include "kernel/ring_consumer.h"

#include <linux/bpf.h>

#include <algorithm>
#include <cerrno>
#include <climits>
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
        const std::lock_guard hold(ring.lock);
        // What a reader copied out came before what the ring still holds.
        records += hand_on_spilled(static_cast<unsigned>(cpu), ring);
        const std::int64_t drained = drain_ring(static_cast<unsigned>(cpu), ring.mapping, records);
        if (drained < 0) {
            result = static_cast<int>(drained);  // the other rings are still drained
            continue;
        }
        note_backlog(static_cast<std::uint64_t>(drained));
    }
    records_ += records;
    if (result < 0) return result;
    return static_cast<int>(std::min<std::uint64_t>(records, INT_MAX));
}

void RingConsumer::note_backlog(std::uint64_t bytes) {
    std::uint64_t peak = peak_backlog_bytes_.load(std::memory_order_relaxed);
    while (bytes > peak && !peak_backlog_bytes_.compare_exchange_weak(peak, bytes, std::memory_order_relaxed)) {
    }
}

std::int64_t RingConsumer::spill(unsigned cpu) {
    Ring& ring = *rings_.at(cpu);
    const std::lock_guard hold(ring.lock);
    const RingMapping& m = ring.mapping;
    const unsigned long mask = m.size() - 1;
    const std::span<const std::byte> data = m.data();
    const unsigned long started = load_acquire(m.consumer_pos());
    unsigned long consumed = started;
    const unsigned long produced = load_acquire(m.producer_pos());
    while (consumed < produced) {
        const auto* header = reinterpret_cast<const std::uint32_t*>(data.data() + (consumed & mask));
        const std::uint32_t len = load_acquire(header);
        if (len & BPF_RINGBUF_BUSY_BIT) break;  // not committed yet: the next spill or drain, in order
        const std::uint32_t size = len & ~std::uint32_t{BPF_RINGBUF_DISCARD_BIT};
        if (size > m.size() - BPF_RINGBUF_HDR_SZ) return -EBADMSG;
        if (!(len & BPF_RINGBUF_DISCARD_BIT)) {
            const std::size_t footprint = 8 + ((size + 7ul) & ~7ul);
            // Full: the rest stays in the ring, which drops what it cannot hold, counted.
            if (ring.spilled.size() + footprint > m.size()) break;
            const std::size_t at = ring.spilled.size();
            ring.spilled.resize(at + footprint);
            std::memcpy(ring.spilled.data() + at, &size, sizeof size);
            const std::size_t offset = (consumed + BPF_RINGBUF_HDR_SZ) & mask;
            const std::size_t first = std::min<std::size_t>(size, data.size() - offset);
            std::memcpy(ring.spilled.data() + at + 8, data.data() + offset, first);
            std::memcpy(ring.spilled.data() + at + 8 + first, data.data(), size - first);  // the part past the end
        }
        consumed += ring_footprint(size);
    }
    if (consumed == started) return 0;
    store_release(m.consumer_pos(), consumed);
    note_backlog(produced - started);
    spilled_bytes_.fetch_add(consumed - started, std::memory_order_relaxed);
    return static_cast<std::int64_t>(consumed - started);
}

std::uint64_t RingConsumer::backlog_bytes(unsigned cpu) const {
    const RingMapping& m = rings_.at(cpu)->mapping;
    return load_acquire(m.producer_pos()) - load_acquire(m.consumer_pos());
}

std::uint64_t RingConsumer::hand_on_spilled(unsigned cpu, Ring& ring) {
    std::uint64_t records = 0;
    const std::span<const std::byte> spilled = ring.spilled;
    auto to_sink = [this, cpu](std::span<const std::byte> record) { sink_.on_record(cpu, record); };
    for (std::size_t at = 0; at < spilled.size();) {
        std::uint32_t size = 0;
        std::memcpy(&size, spilled.data() + at, sizeof size);
        records += core::for_each_record(spilled.subspan(at + 8, size), to_sink);
        at += 8 + ((size + 7ul) & ~7ul);
    }
    // Kept for the next spill while the rings are busy; given back once a
    // drain finds it much larger than what it held (a burst has passed).
    if (ring.spilled.capacity() > (std::size_t{1} << 20) && ring.spilled.size() < ring.spilled.capacity() / 8) {
        std::vector<std::byte>().swap(ring.spilled);
    } else {
        ring.spilled.clear();
    }
    return records;
}

std::int64_t RingConsumer::drain_ring(unsigned cpu, RingMapping& ring, std::uint64_t& records) {
    const unsigned long mask = ring.size() - 1;
    const unsigned long started = load_acquire(ring.consumer_pos());
    unsigned long consumed = started;
    // Records committed while we read are consumed too: go round until a
    // pass finds nothing new (libbpf does the same).
    bool got_new = true;
    while (got_new) {
        got_new = false;
        const unsigned long produced = load_acquire(ring.producer_pos());
        while (consumed < produced) {
            // Headers are 8-aligned in a ring of whole pages: never split.
            const auto* header = reinterpret_cast<const std::uint32_t*>(ring.data().data() + (consumed & mask));
            const std::uint32_t len = load_acquire(header);
            // Reserved, not committed yet: what follows waits for the next
            // drain, in order, even if it is committed already.
            if (len & BPF_RINGBUF_BUSY_BIT) return static_cast<std::int64_t>(consumed - started);
            const std::uint32_t size = len & ~std::uint32_t{BPF_RINGBUF_DISCARD_BIT};
            // The kernel never reserves more than the ring (__bpf_ringbuf_reserve);
            // a bigger length would make us read past the mapping.
            if (size > ring.size() - BPF_RINGBUF_HDR_SZ) return -EBADMSG;
            got_new = true;
            // A discarded sample (bpf_ringbuf_discard) is skipped, not read.
            if (!(len & BPF_RINGBUF_DISCARD_BIT)) records += hand_on(cpu, ring, consumed + BPF_RINGBUF_HDR_SZ, size);
            consumed += ring_footprint(size);
            store_release(ring.consumer_pos(), consumed);
        }
    }
    return static_cast<std::int64_t>(consumed - started);
}

std::uint64_t RingConsumer::hand_on(unsigned cpu, const RingMapping& ring, unsigned long pos, std::size_t size) {
    const std::span<const std::byte> data = ring.data();
    const std::size_t offset = pos & (ring.size() - 1);
    auto to_sink = [this, cpu](std::span<const std::byte> record) { sink_.on_record(cpu, record); };
    if (offset + size <= data.size()) return core::for_each_record(data.subspan(offset, size), to_sink);
    // The sample runs past the ring's end and continues at its start.
    const std::span<const std::byte> first = data.subspan(offset);
    return core::for_each_record(first, data.first(size - first.size()), bounce_, to_sink);
}

}  // namespace kleak
