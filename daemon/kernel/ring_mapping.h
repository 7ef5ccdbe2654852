// One BPF_MAP_TYPE_RINGBUF mapped into the daemon, its data area ONCE.
//
// libbpf maps the data area twice, back to back, so that a record wrapping
// past the end reads contiguously; every page of both mappings counts in the
// daemon's RSS (2 x 8 MiB per CPU at the default ring size). kleakd maps it
// once and lets the consumer copy the rare wrapping record (record_batch.h).
// Layout, as kernel/bpf/ringbuf.c exposes it to mmap:
//   offset 0:         consumer page (consumer_pos), the only writable page
//   offset page_size: producer page (producer_pos), then the data area
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace kleak {

class RingMapping {
public:
    // Throws StartupError naming the CPU whose ring could not be mapped.
    RingMapping(int ring_fd, unsigned cpu);
    ~RingMapping();
    RingMapping(RingMapping&& other) noexcept;
    RingMapping& operator=(RingMapping&&) = delete;
    RingMapping(const RingMapping&) = delete;
    RingMapping& operator=(const RingMapping&) = delete;

    // The kernel's unsigned long positions: bytes ever consumed / committed
    // or reserved. They only grow; position & (size() - 1) is the offset.
    unsigned long* consumer_pos() const { return consumer_pos_; }
    const unsigned long* producer_pos() const { return producer_pos_; }
    std::span<const std::byte> data() const { return {data_, size_}; }
    std::size_t size() const { return size_; }  // the map's max_entries: a power of two

private:
    unsigned long* consumer_pos_ = nullptr;
    const unsigned long* producer_pos_ = nullptr;  // start of the read-only mapping
    const std::byte* data_ = nullptr;
    std::size_t size_ = 0;
    std::size_t page_size_ = 0;
};

}  // namespace kleak
