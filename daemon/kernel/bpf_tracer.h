// RAII owner of the loaded BPF programs and their per-CPU rings.
//
// Construction runs the whole start-up: preflight checks (BTF, privileges,
// kernel features: kernel_checks.h), choose tp_btf or raw_tp programs
// (attach_mode.h; a verifier refusal of tp_btf in automatic mode falls back
// to raw_tp once), open the skeleton, size `rings` and `pending` to the possible CPUs and create
// one ring per CPU, turn off programs whose tracepoint this kernel lacks, load,
// install the rings, map `pending`, attach (the CPU-offline flush first, then
// the traced events). Any failure throws StartupError with what failed and
// what to do. Destruction detaches and frees everything: nothing is left in
// the kernel, unless another holder (systemd's fd store) keeps the links.
//
// Given what a previous process handed over (kernel/bpf_handover.h) whose
// identity matches this object and configuration, it loads its programs over
// the handed maps and adopts the links: nothing is detached, nothing is
// attached anew, and the rings are the old ones (continuity() adopted).
// Otherwise it attaches fresh and closes the old links (replaced).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/sizes.h"
#include "core/slab_caches.h"
#include "core/stack_capture.h"
#include "kernel/attach_mode.h"
#include "kernel/bpf_handover.h"
#include "kernel/unique_fd.h"
#include "kleak_abi.h"

struct kleak_bpf;           // the bpftool skeleton
struct kleak_pending_slot;  // kleak_abi.h
struct bpf_program;
struct bpf_map;
struct bpf_link;
struct btf;

namespace kleak::core {
struct AllocatorText;  // core/allocator_text.h
}

namespace kleak {

// A digest of the BPF object this daemon carries (hex): a state image
// (core/state_image.h) is loaded only by a daemon carrying the same one.
std::string bpf_object_digest();
// The first part of BpfTracer::identity(): the record ABI and the object.
// Rings handed over by a process whose identity starts with it hold records
// this daemon decodes, whatever the configuration (kernel/handed_rings.h).
std::string bpf_records_identity();


struct TracerOptions {
    std::uint64_t buffer_size = 0;  // bytes per CPU ring, validated by the caller
    bool trace_kmalloc = true;      // kmalloc/kfree
    bool trace_kmem_cache = true;   // kmem_cache_alloc/kmem_cache_free
    bool trace_printk = false;      // printk:console (the kernel log)
    // The other allocator families (README, "Allocator families"): each is
    // left out with a warning on a kernel that lacks its tracepoints.
    bool trace_page = false;        // kmem:mm_page_alloc/mm_page_free
    bool trace_percpu = true;       // percpu:percpu_alloc_percpu/percpu_free_percpu
    bool trace_vmalloc = true;      // vmalloc:alloc_vmap_area/free_vmap_area_noflush
    // Record movable pages too (process memory, page cache, tmpfs) rather
    // than only count them.
    bool track_movable_pages = false;
    // tp_btf or raw_tp programs; automatic probes the kernel (attach_mode.h).
    AttachMode attach = AttachMode::automatic;
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
    // Kernel stacks from the start (README, "Stacks"); set_stack_capture()
    // changes them at run time. all mode: 1 in 2^stack_sample_shift pointers.
    core::StackMode stacks = core::StackMode::suspects;
    std::uint32_t stack_sample_shift = core::kDefaultStackSampleShift;
};

// The stack counters of one family, summed over CPUs (enum kleak_stack_count).
struct StackCounts {
    std::uint64_t captured = 0;
    std::uint64_t collided = 0;  // the stack map had no room for a new stack
    std::uint64_t failed = 0;
};

inline constexpr std::uint32_t kMaxSampleShift = 32;

// The ring of a CPU offline at start, until it comes online (kleak_abi.h).
inline constexpr std::uint64_t kOfflineRingBytes = KLEAK_SMALL_RING_BYTES;
static_assert(kOfflineRingBytes >= core::kMinBufferSize);

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

// Unmaps BpfTracer's read-only mapping of the `pending` map.
struct PendingUnmapper {
    std::size_t length = 0;
    void operator()(const ::kleak_pending_slot* slots) const;
};

struct ProgramSpec;  // bpf_tracer.cpp

// One program of kleak.bpf.c in the attach mode in use: the program, where
// its link goes, and its twin of the other mode (never loaded).
struct ProgramVariant {
    ::bpf_program* program = nullptr;
    ::bpf_link** link = nullptr;
    ::bpf_program* other = nullptr;
};

// How this process came by its attached programs.
enum class Continuity {
    fresh,     // nothing was handed over: attached anew
    adopted,   // a previous process's links and maps, kept attached across the restart
    replaced,  // handed over but of another object or configuration: attached anew, the old closed
};
const char* continuity_name(Continuity c);

class BpfTracer {
public:
    explicit BpfTracer(const TracerOptions& options, Handover handed_over = {});
    ~BpfTracer();
    BpfTracer(const BpfTracer&) = delete;
    BpfTracer& operator=(const BpfTracer&) = delete;

    unsigned cpu_count() const { return static_cast<unsigned>(ring_fds_.size()); }
    std::uint64_t buffer_size() const { return buffer_size_; }
    // Each CPU's ring now, by CPU.
    std::vector<int> ring_fds() const;
    // Its size: buffer_size() for a CPU online at start or grown since,
    // kOfflineRingBytes for one offline at start, more for a ring adopted
    // from a restart (TracingSession::make_room_for_restart()).
    const std::vector<std::uint64_t>& ring_bytes() const { return ring_bytes_; }
    // CPUs whose ring is still the small one.
    std::vector<unsigned> small_ring_cpus() const;

    // Replacing a CPU's ring (growing it when the CPU comes online, a bigger
    // one for a restart: app/tracing_session.h): a new ring of `bytes` (a
    // power of two; invalid, errno set, on failure), which the consumer maps
    // first, then installs it for `cpu`'s programs. Records in flight in the
    // old ring stay readable there until release_retired_rings().
    // install_ring returns 0 or a negative errno.
    UniqueFd make_ring(std::uint64_t bytes) const { return create_ring(bytes); }
    int install_ring(unsigned cpu, UniqueFd ring, std::uint64_t bytes);
    // Closes the rings install_ring() replaced: once no program can still be
    // writing into them and the consumer has let them go.
    void release_retired_rings() { retired_ring_fds_.clear(); }
    std::vector<int> retired_ring_fds() const;
    const std::vector<std::string>& attached() const { return attached_; }
    // How the programs attached (tp_btf or raw_tp), and why.
    const AttachChoice& attach_choice() const { return attach_; }

    // Records lost per CPU because its ring was full (every family and
    // printk). Returns an empty vector if the map cannot be read (the caller
    // keeps the last good value).
    std::vector<std::uint64_t> read_drops() const;
    // The same per family (core::Family order; KLEAK_FAMILY_COUNT long),
    // over every CPU; empty if unreadable.
    std::vector<std::uint64_t> read_drops_by_family() const;
    // Page allocations counted in the kernel, in pages, by enum
    // kleak_page_count (KLEAK_PAGE_COUNTS long); empty if unreadable.
    std::vector<std::uint64_t> read_page_counts() const;
    // Which families are attached (a family the kernel lacks is not).
    bool family_attached(unsigned family) const { return family < 4 && families_attached_[family]; }

    // Per attached program: run count, run time and recursion misses. A
    // program whose info cannot be read is left out.
    std::vector<ProgramStats> program_stats() const;

    // Pushes the partly filled record batch of each CPU whose `pending` flag
    // is set into its ring, so that everything recorded before the drain
    // started, less the drain holdback, can be consumed; CPUs with an empty
    // batch are not disturbed. Call before each drain. Flushes every CPU if
    // the flags could not be mapped. Returns 0 or a negative errno.
    int flush_batches();

    // Pushes every CPU's batch into its ring, whatever its flag says: after
    // detach, when nothing will come to age a batch or set a flag again.
    // Returns 0 or a negative errno.
    int flush_all_batches();

    // Whether kleak__cpu_down is attached: a CPU that goes offline pushes
    // its batch into its ring on the way down. False when the kernel lacks
    // cpuhp:cpuhp_enter; what such a CPU holds then waits for it to return.
    bool flushes_offline_cpus() const { return flushes_offline_cpus_; }

    // Whether `pending` is mapped, so that flush_batches() can skip CPUs.
    bool pending_flags_mapped() const { return pending_ != nullptr; }
    // CPU `cpu`'s flag: its batch may hold records. True when not mapped
    // (or cpu >= cpu_count()).
    bool batch_pending(unsigned cpu) const;

    // Since start-up, start-up's flush included: CPUs kleak__flush ran on
    // (an IPI each, unless it was the daemon's own CPU; offline CPUs not
    // counted), and CPUs flush_batches() passed over because their flag read 0.
    std::uint64_t flushed_cpus() const { return flushed_cpus_; }
    std::uint64_t skipped_cpus() const { return skipped_cpus_; }

    // What the kernel says about the slab cache at `cache`, a kmem_cache
    // address from a record (kleak__cache_info, one BPF_PROG_TEST_RUN, a few
    // us): nullopt when it cannot be read. Works after detach() too.
    std::optional<core::CacheInfo> cache_info(std::uint64_t cache) const;

    // Which allocations get a kernel stack from now on: the mode, and in
    // suspects mode the call sites (at most KLEAK_STACK_SITES_MAX). Updates
    // the `stack_sites` hash and then `stack_settings`. Returns what failed,
    // or nullopt.
    std::optional<std::string> set_stack_capture(core::StackMode mode, std::uint32_t sample_shift,
                                                 std::span<const std::uint64_t> sites);
    std::size_t stack_site_count() const { return stack_sites_.size(); }
    // One stack's frames, innermost first, by its id; empty if the map has none.
    std::vector<std::uint64_t> stack_frames(std::uint32_t stack_id) const;
    // Per family (core::Family order); empty if unreadable.
    std::vector<StackCounts> read_stack_counts() const;

    // Stops new records; the rings stay readable so the tail can be drained.
    // Links someone else holds too (systemd) stay attached until they close theirs.
    void detach();

    Continuity continuity() const { return continuity_; }
    // Which object and configuration the programs run with: the ABI, the
    // object's digest, rodata, ring sizes, attach mode and the programs loaded.
    const std::string& identity() const { return identity_; }
    // Why a handover was not adopted ("" when adopted or none was offered).
    const std::string& handover_refusal() const { return handover_refusal_; }
    // What to hand the next process, by fd name (bpf_handover.h): every map
    // and every attached program's link. The fds stay owned here.
    std::vector<std::pair<std::string, int>> handover_fds() const;

private:
    struct LoadRefusal {
        std::string message;    // describe_refusal()
        bool has_twin = false;  // a traced program, which the other mode also has
        int family = -1;        // the refused program's allocator family (KLEAK_FAMILY_*), -1: none
    };
    // Opens the skeleton, picks the programs of attach_.mode that this kernel
    // and `options` want, and loads them. Returns the refusal when the
    // verifier refused one; throws StartupError on any other failure.
    std::optional<LoadRefusal> open_and_load(const TracerOptions& options, const ::btf& vmlinux,
                                             std::vector<ProgramSpec>& specs);
    // identity_ of the opened, configured object; whether handover_ fits it
    // (same identity, every map, a link for every wanted program).
    std::string configured_identity(const TracerOptions& options, const std::vector<ProgramSpec>& specs) const;
    bool handover_fits(const std::vector<ProgramSpec>& specs);
    // Before load: the object's maps become the handed-over ones.
    void reuse_handed_maps();
    // After load, adopting: the rings the `rings` map holds, the stack sites
    // `stack_sites` holds, and the handed links in place of attaching.
    void adopt_rings();
    void adopt_stack_sites();
    void adopt_links(const std::vector<ProgramSpec>& specs);
    void attach_fresh(std::vector<ProgramSpec>& specs);
    int program_fd_for_stats(std::size_t i) const;
    enum class FlushScope { pending, every_cpu };
    // Runs kleak__flush on each online CPU in `scope`; 0 or the first
    // negative errno.
    int run_flush(FlushScope scope);
    // run_flush(), with a rate-limited warning when it fails.
    int flush(FlushScope scope);
    // Maps `pending` read-only; leaves pending_ empty, with a warning, if it fails.
    void map_pending_flags();
    // One per-CPU array slot per possible CPU; empty if the map cannot be read.
    std::vector<std::uint64_t> read_per_cpu_counter(const ::bpf_map* map, std::uint32_t key = 0) const;
    static UniqueFd create_ring(std::uint64_t bytes);
    // Nested kmem_cache_free events the second program recorded, all CPUs.
    std::uint64_t read_recovered() const;

    struct SkeletonDeleter {
        void operator()(::kleak_bpf* skel) const;
    };

    std::unique_ptr<::kleak_bpf, SkeletonDeleter> skel_;
    // `pending`, one slot per possible CPU; null if it could not be mapped.
    std::unique_ptr<const ::kleak_pending_slot, PendingUnmapper> pending_;
    std::vector<UniqueFd> ring_fds_;          // by CPU
    std::vector<std::uint64_t> ring_bytes_;   // by CPU
    std::vector<UniqueFd> retired_ring_fds_;  // replaced by install_ring(), still drained
    AttachChoice attach_;
    const ::bpf_program* free_primary_ = nullptr;  // kmem_cache_free's first program
    ProgramVariant free_nested_;                   // and its second (kleak__kmem_cache_free_nested)
    ProgramVariant cpu_down_;                      // program null: no cpuhp_enter here
    std::vector<std::string> attached_;
    std::vector<const ::bpf_program*> attached_programs_;  // parallel to attached_
    std::uint64_t buffer_size_ = 0;
    std::uint64_t flush_failures_ = 0;
    std::uint64_t flushed_cpus_ = 0;
    std::uint64_t skipped_cpus_ = 0;
    bool flushes_offline_cpus_ = false;
    bool families_attached_[4] = {false, false, false, false};
    std::unique_ptr<core::AllocatorText> allocator_text_;  // for the page and vmalloc programs' rodata
    std::vector<std::uint64_t> stack_sites_;  // what `stack_sites` holds, sorted
    Handover handover_;                       // until adopted or replaced
    bool handed_over_ = false;                // something was offered
    Continuity continuity_ = Continuity::fresh;
    std::string identity_;
    std::string handover_refusal_;
    std::vector<int> link_fds_;               // parallel to attached_
    int cpu_down_link_fd_ = -1;
    std::vector<UniqueFd> adopted_links_;     // parallel to attached_ when adopted
    UniqueFd adopted_cpu_down_link_;
    std::vector<UniqueFd> adopted_prog_fds_;  // the running programs, for program_stats()
};

}  // namespace kleak
