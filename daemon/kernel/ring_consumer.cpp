#include "kernel/ring_consumer.h"

#include <linux/bpf.h>

#include <algorithm>
#include <cerrno>
#include <climits>

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
    for (std::size_t cpu = 0; cpu < ring_fds.size(); ++cpu) rings_.emplace_back(ring_fds[cpu], static_cast<unsigned>(cpu));
}

int RingConsumer::drain() {
    std::uint64_t records = 0;
    int result = 0;
    for (std::size_t cpu = 0; cpu < rings_.size(); ++cpu) {
        const std::int64_t drained = drain_ring(static_cast<unsigned>(cpu), rings_[cpu], records);
        if (drained < 0) {
            result = static_cast<int>(drained);  // the other rings are still drained
            continue;
        }
        peak_backlog_bytes_ = std::max(peak_backlog_bytes_, static_cast<std::uint64_t>(drained));
    }
    records_ += records;
    if (result < 0) return result;
    return static_cast<int>(std::min<std::uint64_t>(records, INT_MAX));
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
