// RAII owner of the loaded BPF programs and their per-CPU rings.
//
// Construction runs the whole start-up: preflight checks (BTF, privileges),
// open the skeleton, size `rings` to the possible CPUs and create one ring per
// CPU, turn off programs whose tracepoint this kernel lacks, load, install the
// rings, attach. Any failure throws StartupError with what failed and what to
// do. Destruction detaches and frees everything: nothing is left in the kernel.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kernel/unique_fd.h"

struct kleak_bpf;  // the bpftool skeleton

namespace kleak {

struct TracerOptions {
    std::uint64_t buffer_size = 0;  // bytes per CPU ring, validated by the caller
    bool trace_kmalloc = true;      // kmalloc/kfree
    bool trace_kmem_cache = true;   // kmem_cache_alloc/kmem_cache_free
    // Producers force a consumer wake-up when their ring holds this much;
    // 0 means half the ring. Tests set it past the ring size to make a
    // burst overflow deterministically.
    std::uint64_t wakeup_backlog_bytes = 0;
};

class BpfTracer {
public:
    explicit BpfTracer(const TracerOptions& options);
    ~BpfTracer();
    BpfTracer(const BpfTracer&) = delete;
    BpfTracer& operator=(const BpfTracer&) = delete;

    unsigned cpu_count() const { return static_cast<unsigned>(ring_fds_.size()); }
    std::uint64_t buffer_size() const { return buffer_size_; }
    std::vector<int> ring_fds() const;
    const std::vector<std::string>& attached() const { return attached_; }

    // Records lost per CPU because its ring was full. Returns an empty vector
    // if the map cannot be read (the caller keeps the last good value).
    std::vector<std::uint64_t> read_drops() const;

    // Stops new records; the rings stay readable so the tail can be drained.
    void detach();

private:
    struct SkeletonDeleter {
        void operator()(::kleak_bpf* skel) const;
    };

    std::unique_ptr<::kleak_bpf, SkeletonDeleter> skel_;
    std::vector<UniqueFd> ring_fds_;
    std::vector<std::string> attached_;
    std::uint64_t buffer_size_ = 0;
};

}  // namespace kleak
