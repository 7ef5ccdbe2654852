// The tail of a stopping kleakd's rings: what its readers copied out after
// its last drain, handed to the next kleakd in a memfd (systemd's fd store,
// service/fd_store.h) so that the rings are read while the old process
// writes its state image and final snapshot, not only once the new one runs.
//
// The consumer position in each ring is the contract: the image holds the
// records before the position of the last drain, the tail those from there
// to the position it ends at, the ring those after. The next process puts
// the tail in front of its own copies only if every ring's position is still
// the one the tail ends at (nobody consumed in between); else it refuses the
// tail, says so, and counts its records as lost.
//
// Format (one boot, one machine: native byte order): "KLKTAIL1", the
// records identity (u32 length, bytes: bpf_records_identity()), segments
// (u32 cpu, u32 zero, u64 length, that many bytes of
// RingConsumer copies), and the end (u32 0xffffffff, u32 rings, u64
// CLOCK_MONOTONIC ns when the readers stopped, u64 position per ring).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "kernel/ring_consumer.h"
#include "kernel/unique_fd.h"

namespace kleak {

class RingTailWriter {
public:
    // A fresh memfd; error() says why not.
    RingTailWriter();
    const std::string& error() const { return error_; }
    // Appends what `consumer`'s readers copied since the last call.
    void append(RingConsumer& consumer);
    // The end, once the readers have stopped: the memfd to store (invalid,
    // error() set, on failure).
    UniqueFd finish(RingConsumer& consumer);
    std::uint64_t bytes() const { return bytes_; }

private:
    void write(const void* data, std::size_t size);

    UniqueFd fd_;
    SampleBuffer taken_;
    std::string error_;
    std::uint64_t bytes_ = 0;  // of copies
};

// Puts the tail in `fd` in front of `consumer`'s copies. Returns the bytes
// of copies put, or an error (then nothing was put).
struct TailLoad {
    std::uint64_t bytes = 0;
    std::optional<std::string> error;
    std::uint64_t read_until_ns = 0;  // when the old readers stopped
};
TailLoad load_ring_tail(int fd, RingConsumer& consumer);

}  // namespace kleak
