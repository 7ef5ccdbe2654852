// Reads the per-CPU rings. The callback only hands each record's bytes, with
// the CPU it came from, to a RecordSink: no logging, no symbolization, no
// allocation beyond what the sink's copy needs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

struct ring_buffer;

namespace kleak {

class RecordSink {
public:
    virtual ~RecordSink() = default;
    virtual void on_record(unsigned cpu, std::span<const std::byte> record) = 0;
};

class RingConsumer {
public:
    // Throws StartupError if libbpf cannot map the rings.
    RingConsumer(const std::vector<int>& ring_fds, RecordSink& sink);
    ~RingConsumer();
    RingConsumer(const RingConsumer&) = delete;
    RingConsumer& operator=(const RingConsumer&) = delete;

    // Consumes everything committed in every ring. Returns the number of
    // records, or a negative errno.
    int drain();

    std::uint64_t records() const { return records_; }
    // The most bytes one ring held at a drain: how close it came to overflowing.
    std::uint64_t peak_backlog_bytes() const { return peak_backlog_bytes_; }

private:
    struct RingContext {
        RingConsumer* self;
        unsigned cpu;
        std::uint64_t drained_bytes;
    };
    static int on_sample(void* ctx, void* data, std::size_t size);

    RecordSink& sink_;
    std::vector<std::unique_ptr<RingContext>> contexts_;
    ring_buffer* rb_ = nullptr;
    std::uint64_t records_ = 0;
    std::uint64_t peak_backlog_bytes_ = 0;
};

}  // namespace kleak
