// Reads the per-CPU rings. For every committed sample it hands each record
// the sample holds (one today, several once BPF batches them), with the CPU it
// came from, to a RecordSink: no logging, no symbolization, no allocation
// beyond what the sink's copy needs.
//
// kleakd's own consumer rather than libbpf's ring_buffer: it maps each ring's
// data area once (ring_mapping.h), which halves the rings' share of RSS.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
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

    // Consumes everything committed in every ring. Returns the number of
    // records, or a negative errno.
    int drain();

    std::uint64_t records() const { return records_; }
    // The most bytes one ring held at a drain: how close it came to overflowing.
    std::uint64_t peak_backlog_bytes() const { return peak_backlog_bytes_; }

private:
    // Consumes one ring; returns the bytes consumed (ring headers and padding
    // included) or a negative errno.
    std::int64_t drain_ring(unsigned cpu, RingMapping& ring, std::uint64_t& records);
    // Hands on the records of the sample of `size` bytes at `pos`.
    std::uint64_t hand_on(unsigned cpu, const RingMapping& ring, unsigned long pos, std::size_t size);

    RecordSink& sink_;
    std::vector<RingMapping> rings_;
    // The one record that wraps past a ring's end is copied here.
    std::array<std::byte, core::kMaxRecordBytes> bounce_{};
    std::uint64_t records_ = 0;
    std::uint64_t peak_backlog_bytes_ = 0;
};

}  // namespace kleak
