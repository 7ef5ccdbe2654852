#include "kernel/ring_consumer.h"

#include <bpf/libbpf.h>

#include <cerrno>

#include "kernel/startup_error.h"

namespace kleak {

namespace {
// Each ring record carries an 8-byte header and is padded to 8 bytes.
constexpr std::uint64_t ring_footprint(std::size_t size) { return 8 + ((size + 7) & ~std::size_t{7}); }
}  // namespace

RingConsumer::RingConsumer(const std::vector<int>& ring_fds, RecordSink& sink) : sink_(sink) {
    for (std::size_t cpu = 0; cpu < ring_fds.size(); ++cpu) {
        contexts_.push_back(std::make_unique<RingContext>(RingContext{this, static_cast<unsigned>(cpu), 0}));
        RingContext* ctx = contexts_.back().get();
        int err = 0;
        if (!rb_) {
            rb_ = ring_buffer__new(ring_fds[cpu], on_sample, ctx, nullptr);
            if (!rb_) err = -errno;
        } else {
            err = ring_buffer__add(rb_, ring_fds[cpu], on_sample, ctx);
        }
        if (err) throw StartupError(describe_errno("mapping the ring of CPU " + std::to_string(cpu) + " failed", err));
    }
}

RingConsumer::~RingConsumer() { ring_buffer__free(rb_); }

int RingConsumer::on_sample(void* ctx, void* data, std::size_t size) {
    auto* ring = static_cast<RingContext*>(ctx);
    ring->drained_bytes += ring_footprint(size);
    ring->self->sink_.on_record(ring->cpu, {static_cast<const std::byte*>(data), size});
    return 0;
}

int RingConsumer::drain() {
    for (auto& ctx : contexts_) ctx->drained_bytes = 0;
    const int n = ring_buffer__consume(rb_);
    if (n < 0) return n;
    records_ += static_cast<std::uint64_t>(n);
    for (const auto& ctx : contexts_) peak_backlog_bytes_ = std::max(peak_backlog_bytes_, ctx->drained_bytes);
    return n;
}

}  // namespace kleak
