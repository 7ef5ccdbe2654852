// The rings a previous kleakd handed over (kernel/bpf_handover.h), read from
// the restarted process's first moment: before it reads kallsyms, loads the
// state image, or loads its own copy of the BPF object to compare it with
// the handed one. Those take ~0.5 s (more at 1M outstanding), and the
// programs never stopped writing: at full rate an 8 MiB ring fills in ~70 ms.
//
// Eager readers (ring_readers.h) copy each ring out every millisecond into
// memory, up to kCopyBytes per CPU; what does not fit stays in
// the ring, and what the ring then cannot take is dropped and counted by the
// programs, as ever. Nothing is decoded here: the copies wait, in order,
// until the tracing session adopts the consumer and drains it after the
// state image has been loaded, so the records the programs wrote while no
// process ran are applied after the restored state, as if the old process
// had gone on. The consumer position in each ring's mmap'd page is the
// contract between the two processes: the old one consumed up to it (its
// image, then its tail: ring_tail.h), the new one copies from it.
//
// Only rings whose records this build decodes are read: the handed identity
// must name this ABI and this object (bpf_records_identity(); no load
// needed). A configuration that differs is found later, when the tracer
// compares the whole identity: it attaches anew and these copies are
// thrown away, as the old programs' records past the restart always were.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>

#include "kernel/bpf_handover.h"
#include "kernel/ring_consumer.h"
#include "kernel/ring_readers.h"

namespace kleak {

// What a process that adopted the handed rings knows of their reading.
struct HandedReading {
    std::uint64_t since_ns = 0;                 // its readers started (0: not read early)
    std::uint64_t tail_bytes = 0;               // taken from the previous process's tail
    std::uint64_t previous_read_until_ns = 0;   // the tail's end (0: no tail)
};

class HandedRings {
public:
    // While nothing drains, each reader may hold this much in copies
    // (~1.5 s at full rate here), in rings' worth of `ring_bytes`.
    static constexpr std::uint64_t kCopyBytes = 128ull << 20;
    static unsigned copy_limit(std::size_t ring_bytes) {
        return static_cast<unsigned>(std::max<std::uint64_t>(2, kCopyBytes / std::max<std::size_t>(ring_bytes, 1)));
    }

    HandedRings() = default;
    // Starts reading every ring in `handover` into a consumer that will hand
    // its records to `sink` once drained. Not reading (reading() false,
    // why_not() says why) when there is nothing to read or it cannot be.
    // `ring_tail` (may be -1): what the previous kleakd read after its last
    // drain (kernel/ring_tail.h), put in front of what is read here.
    HandedRings(const Handover& handover, int ring_tail, RecordSink& sink, std::uint64_t now_ns);
    HandedRings(HandedRings&&) = default;
    HandedRings& operator=(HandedRings&&) = default;
    ~HandedRings();

    bool reading() const { return readers_ != nullptr; }
    const std::string& why_not() const { return why_not_; }
    std::size_t ring_count() const { return ring_fds_.size(); }
    const HandedReading& reading_so_far() const { return reading_; }
    // Why the previous kleakd's tail was refused ("" if it was not).
    const std::string& tail_refusal() const { return tail_refusal_; }

    // The tracing session takes them over (copy limit back to the default
    // at its first drain: RingReaders::lazy()).
    std::unique_ptr<RingConsumer> take_consumer() { return std::move(consumer_); }
    std::unique_ptr<RingReaders> take_readers() { return std::move(readers_); }

private:
    std::vector<UniqueFd> ring_fds_;  // dups of the handed rings: the tracer takes the originals
    std::unique_ptr<RingConsumer> consumer_;
    std::unique_ptr<RingReaders> readers_;  // stopped before consumer_ goes
    std::string why_not_;
    HandedReading reading_;
    std::string tail_refusal_;
};

}  // namespace kleak
