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
struct bpf_program;
struct bpf_map;

namespace kleak {

struct TracerOptions {
    std::uint64_t buffer_size = 0;  // bytes per CPU ring, validated by the caller
    bool trace_kmalloc = true;      // kmalloc/kfree
    bool trace_kmem_cache = true;   // kmem_cache_alloc/kmem_cache_free
    bool trace_printk = false;      // printk:console (the kernel log)
    // Producers force a consumer wake-up when their ring holds this much;
    // 0 means a quarter of the ring. Tests set it past the ring size to make a
    // burst overflow deterministically.
    std::uint64_t wakeup_backlog_bytes = 0;
    // Cost knobs (rodata in kleak.bpf.c). emit_records=false: programs stay
    // attached but write nothing (the hooks' own cost, a diagnostic floor).
    bool emit_records = true;
    // Keep an allocation and its free only when the pointer hashes into
    // 1/2^sample_shift of the space: pairs stay matched, counts scale by
    // 2^sample_shift. 0..kMaxSampleShift; 0 keeps everything.
    std::uint32_t sample_shift = 0;
    // Skip allocations smaller than this (bytes requested). Their frees are
    // still recorded and show as unmatched frees. 0 keeps everything.
    std::uint32_t min_size = 0;
};

inline constexpr std::uint32_t kMaxSampleShift = 32;

// One attached program's kernel-side statistics (bpf_prog_info).
struct ProgramStats {
    std::string name;                   // "kmem:kmalloc"
    std::uint64_t run_cnt = 0;          // runs; 0 unless kernel.bpf_stats_enabled=1
    std::uint64_t run_time_ns = 0;      // total run time; ditto
    std::uint64_t recursion_misses = 0; // events lost: runs the kernel skipped because the program
                                        // nested on its CPU, less those kleak__kmem_cache_free_nested caught
    std::uint64_t kernel_recursion_misses = 0;  // the kernel's own count (bpf_prog_info)
    std::uint64_t recovered = 0;                // nested events the second program recorded
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

    // Per attached program: run count, run time and recursion misses. A
    // program whose info cannot be read is left out.
    std::vector<ProgramStats> program_stats() const;

    // Pushes every CPU's partly filled record batch into its ring, so that
    // everything recorded before this call can be consumed. Call before each
    // drain and after detach. Returns 0 or a negative errno.
    int flush_batches();

    // Stops new records; the rings stay readable so the tail can be drained.
    void detach();

private:
    // Runs kleak__flush on each online CPU; 0 or the first negative errno.
    int run_flush_on_every_cpu();
    // One per-CPU array slot per possible CPU; empty if the map cannot be read.
    std::vector<std::uint64_t> read_per_cpu_counter(const ::bpf_map* map) const;
    // Nested kmem_cache_free events the second program recorded, all CPUs.
    std::uint64_t read_recovered() const;

    struct SkeletonDeleter {
        void operator()(::kleak_bpf* skel) const;
    };

    std::unique_ptr<::kleak_bpf, SkeletonDeleter> skel_;
    std::vector<UniqueFd> ring_fds_;
    std::vector<std::string> attached_;
    std::vector<const ::bpf_program*> attached_programs_;  // parallel to attached_
    std::uint64_t buffer_size_ = 0;
    std::uint64_t flush_failures_ = 0;
};

}  // namespace kleak
