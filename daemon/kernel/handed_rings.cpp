#include "kernel/handed_rings.h"

#include <fcntl.h>

#include <cerrno>
#include <cstring>

#include <spdlog/spdlog.h>

#include "kernel/bpf_tracer.h"
#include "kernel/ring_tail.h"

namespace kleak {

HandedRings::HandedRings(const Handover& handover, int ring_tail, RecordSink& sink, std::uint64_t now_ns) {
    if (handover.empty()) return;
    if (handover.identity().rfind(bpf_records_identity() + " ", 0) != 0) {
        why_not_ = "they hold records of another ABI or object ('" + handover.identity() + "')";
        return;
    }
    for (unsigned cpu = 0; handover.has(ring_fd_name(cpu)); ++cpu) {
        UniqueFd fd(::fcntl(handover.peek(ring_fd_name(cpu)), F_DUPFD_CLOEXEC, 0));
        if (!fd) {
            why_not_ = std::string("duplicating a ring's fd failed: ") + std::strerror(errno);
            ring_fds_.clear();
            return;
        }
        ring_fds_.push_back(std::move(fd));
    }
    if (ring_fds_.empty()) {
        why_not_ = "no ring was handed over";
        return;
    }
    std::vector<int> fds;
    for (const UniqueFd& fd : ring_fds_) fds.push_back(fd.get());
    try {
        consumer_ = std::make_unique<RingConsumer>(fds, sink);
        consumer_->set_copy_limit(copy_limit(consumer_->ring_bytes(0)));
        // Before the readers: the tail ends where they start.
        if (ring_tail >= 0) {
            const TailLoad tail = load_ring_tail(ring_tail, *consumer_);
            reading_.tail_bytes = tail.bytes;
            reading_.previous_read_until_ns = tail.read_until_ns;
            if (tail.error) {
                tail_refusal_ = *tail.error;
                spdlog::warn("the ring tail the previous kleakd stored is refused ({}): the records it read after "
                             "its last drain are lost",
                             tail_refusal_);
            }
        }
        readers_ = std::make_unique<RingReaders>(*consumer_, fds, /*eager=*/true);
    } catch (const std::exception& e) {  // StartupError, bad_alloc: the tracer's own start reads them
        readers_.reset();
        consumer_.reset();
        why_not_ = e.what();
        return;
    }
    reading_.since_ns = now_ns;
}

HandedRings::~HandedRings() { readers_.reset(); }

}  // namespace kleak
