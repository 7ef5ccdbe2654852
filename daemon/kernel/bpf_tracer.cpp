#include "kernel/bpf_tracer.h"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <linux/membarrier.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <iterator>
#include <fstream>
#include <chrono>
#include <thread>
#include <cstddef>
#include <algorithm>
#include <cstring>

#include "core/allocator_text.h"
#include "core/family.h"
#include "core/sizes.h"
#include "kernel/host_info.h"
#include "kernel/kernel_checks.h"
#include "kernel/startup_error.h"
#include "kernel/verifier_log.h"
#include "kleak_abi.h"  // before the skeleton, whose .bss holds a struct it defines
#include "kleak.skel.h"

#include <cstdio>

namespace kleak {

// Even the smallest ring has room for two batches (with their 8-byte ring
// headers) past its default wake-up threshold, and that threshold is positive.
static_assert(core::kMinBufferSize > 2 * (KLEAK_BATCH_BYTES + 8));
// One `pending` slot per cache line; batch_pending() reads its flag as a
// naturally aligned 4-byte word (the array's elements start page-aligned).
static_assert(sizeof(kleak_pending_slot) == KLEAK_CACHE_LINE_BYTES);
static_assert(offsetof(kleak_pending_slot, pending) == 0);

std::string describe_errno(const std::string& what, int negative_errno) {
    const int err = negative_errno < 0 ? -negative_errno : negative_errno;
    std::string text = what + ": " + std::strerror(err);
    switch (err) {
        case EPERM:
        case EACCES:
            text += " (kleakd needs root, or CAP_BPF and CAP_PERFMON; run it with sudo)";
            break;
        case ENOMEM:
        case E2BIG:
            text += " (try a smaller --buffer-size)";
            break;
        case ENOENT:
            text += " (the kernel lacks this tracepoint or BTF for it)";
            break;
        default:
            break;
    }
    return text;
}

// What each program traces, and whether start-up must fail without it. Each
// is built twice (KLEAK_TRACED in kleak.bpf.c): `program` and `link` are the
// variant of the chosen attach mode, `other` the one left unloaded.
struct ProgramSpec {
    const char* category;    // "kmem", "printk"
    const char* tracepoint;  // the event name: its BTF type is btf_trace_<tracepoint>
    bpf_program* program;
    bpf_link** link;
    bpf_program* other;
    bool wanted;    // the user asked for its allocator family
    bool required;  // false: only some kernels have it (pre-6.1 *_node events)
    const char* suffix = "";  // tells a second program on the same tracepoint apart
    int family = KLEAK_FAMILY_SLAB;  // a family other than slab is left out, with a warning, where missing
    int arity = 0;                   // the tracepoint's arguments the program expects (0: not checked)
};

namespace {

int print_libbpf(enum libbpf_print_level level, const char* format, va_list args) {
    char buf[1024];
    const int n = std::vsnprintf(buf, sizeof buf, format, args);
    if (n <= 0) return 0;
    std::string_view text(buf, std::min<std::size_t>(static_cast<std::size_t>(n), sizeof buf - 1));
    while (!text.empty() && text.back() == '\n') text.remove_suffix(1);
    // libbpf's warnings explain failures; its info and debug chatter belong at
    // debug level, and so does a refused program's verifier log, which the
    // start-up error sums up (describe_refusal) and debug shows whole.
    const bool load_log = text.find("-- BEGIN PROG LOAD LOG --") != std::string_view::npos ||
                          text.find("BPF program load failed") != std::string_view::npos ||
                          text.find("failed to load") != std::string_view::npos;
    if (level == LIBBPF_WARN && !load_log)
        spdlog::warn("{}", text);
    else
        spdlog::debug("{}", text);
    return n;
}

// kleak__kmem_cache_free_nested: records the kmem_cache_free events the
// kernel skipped kleak__kmem_cache_free for (see kleak.bpf.c).
constexpr const char* kNestedSuffix = " (nested)";

std::string full_name(const ProgramSpec& spec) {
    return std::string(spec.category) + ":" + spec.tracepoint + spec.suffix;
}

// The tp_btf program kleak__X or the raw_tp program kleak_raw__X, with its link.
#define KLEAK_VARIANT(skel, mode, name)                                                             \
    (mode) == AttachMode::raw_tp ? (skel).progs.kleak_raw__##name : (skel).progs.kleak__##name,     \
        (mode) == AttachMode::raw_tp ? &(skel).links.kleak_raw__##name : &(skel).links.kleak__##name, \
        (mode) == AttachMode::raw_tp ? (skel).progs.kleak__##name : (skel).progs.kleak_raw__##name

std::vector<ProgramSpec> program_specs(::kleak_bpf& skel, AttachMode mode, const TracerOptions& options) {
    const bool frees = options.trace_kmalloc || options.trace_kmem_cache;
    return {
        {"kmem", "kmalloc", KLEAK_VARIANT(skel, mode, kmalloc), options.trace_kmalloc, true},
        {"kmem", "kmalloc_node", KLEAK_VARIANT(skel, mode, kmalloc_node), options.trace_kmalloc, false},
        {"kmem", "kfree", KLEAK_VARIANT(skel, mode, kfree), frees, true},
        {"kmem", "kmem_cache_alloc", KLEAK_VARIANT(skel, mode, kmem_cache_alloc), options.trace_kmem_cache, true},
        {"kmem", "kmem_cache_alloc_node", KLEAK_VARIANT(skel, mode, kmem_cache_alloc_node),
         options.trace_kmem_cache, false},
        {"kmem", "kmem_cache_free", KLEAK_VARIANT(skel, mode, kmem_cache_free), frees, true},
        {"kmem", "kmem_cache_free", KLEAK_VARIANT(skel, mode, kmem_cache_free_nested), frees, true, kNestedSuffix},
        {"printk", "console", KLEAK_VARIANT(skel, mode, printk), options.trace_printk, true},
        // percpu_alloc_percpu took its call site, bytes_alloc and gfp_flags
        // in 5.19: older layouts are refused by arity, not misread.
        {"percpu", "percpu_alloc_percpu", KLEAK_VARIANT(skel, mode, percpu_alloc), options.trace_percpu, false, "",
         KLEAK_FAMILY_PERCPU, 10},
        {"percpu", "percpu_free_percpu", KLEAK_VARIANT(skel, mode, percpu_free), options.trace_percpu, false, "",
         KLEAK_FAMILY_PERCPU, 3},
        {"vmalloc", "alloc_vmap_area", KLEAK_VARIANT(skel, mode, vmalloc_alloc), options.trace_vmalloc, false, "",
         KLEAK_FAMILY_VMALLOC, 6},
        {"vmalloc", "free_vmap_area_noflush", KLEAK_VARIANT(skel, mode, vmalloc_free), options.trace_vmalloc, false,
         "", KLEAK_FAMILY_VMALLOC, 3},
        {"kmem", "mm_page_alloc", KLEAK_VARIANT(skel, mode, page_alloc), options.trace_page, false, "",
         KLEAK_FAMILY_PAGE, 4},
        {"kmem", "mm_page_free", KLEAK_VARIANT(skel, mode, page_free), options.trace_page, false, "",
         KLEAK_FAMILY_PAGE, 2},
    };
}

// The arguments of a tracepoint (its btf_trace_<name> typedef: a pointer to
// a prototype whose first parameter is the probe's data), or -1.
int tracepoint_arity(const btf* vmlinux, const char* tracepoint) {
    const std::string name = std::string("btf_trace_") + tracepoint;
    const int id = btf__find_by_name_kind(vmlinux, name.c_str(), BTF_KIND_TYPEDEF);
    if (id < 0) return -1;
    const btf_type* t = btf__type_by_id(vmlinux, btf__type_by_id(vmlinux, id)->type);
    if (!t || !btf_is_ptr(t)) return -1;
    t = btf__type_by_id(vmlinux, t->type);
    if (!t || !btf_is_func_proto(t)) return -1;
    return static_cast<int>(btf_vlen(t)) - 1;
}

// Runs a loaded, unattached program once on `cpu` (in an IPI when that is
// not this CPU). Returns the program's return value, or a negative errno.
int run_on_cpu(const bpf_program* program, std::size_t cpu) {
    LIBBPF_OPTS(bpf_test_run_opts, opts, .flags = BPF_F_TEST_RUN_ON_CPU, .cpu = static_cast<__u32>(cpu));
    if (bpf_prog_test_run_opts(bpf_program__fd(program), &opts) != 0) return -errno;
    return static_cast<int>(opts.retval);
}

// A tp_btf program needs the kernel's btf_trace_<name> typedef.
bool tracepoint_in_btf(const btf* vmlinux, const char* tracepoint) {
    const std::string name = std::string("btf_trace_") + tracepoint;
    return btf__find_by_name_kind(vmlinux, name.c_str(), BTF_KIND_TYPEDEF) >= 0;
}

// kleak__cpu_down's tracepoint. Not a ProgramSpec: it traces nothing the user
// asked for, so it stays out of attached() (the "tracing ..." lists users see)
// and out of program_stats(), whose lines are the cost of the traced events.
constexpr const char* kCpuDownTracepoint = "cpuhp_enter";

}  // namespace

namespace {

// FNV-1a: a digest, not a defence (nothing here is adversarial).
struct Fnv1a {
    std::uint64_t h = 0xcbf29ce484222325ULL;
    void mix(const void* data, std::size_t size) {
        const auto* bytes = static_cast<const unsigned char*>(data);
        for (std::size_t i = 0; i < size; ++i) h = (h ^ bytes[i]) * 0x100000001b3ULL;
    }
    void mix(const char* text) { mix(text, std::strlen(text) + 1); }
    std::string hex() const {
        char out[17];
        std::snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(h));
        return out;
    }
};

}  // namespace

std::string bpf_object_digest() {
    std::size_t size = 0;
    const void* bytes = ::kleak_bpf__elf_bytes(&size);
    Fnv1a digest;  // once or twice at start-up, ~1 ms
    digest.mix(bytes, size);
    return digest.hex();
}

std::string bpf_records_identity() {
    return "abi " + std::to_string(KLEAK_ABI_VERSION) + " object " + bpf_object_digest();
}

void BpfTracer::SkeletonDeleter::operator()(::kleak_bpf* skel) const { kleak_bpf__destroy(skel); }

void PendingUnmapper::operator()(const ::kleak_pending_slot* slots) const {
    ::munmap(const_cast<::kleak_pending_slot*>(slots), length);
}

BpfTracer::BpfTracer(const TracerOptions& options, Handover handed_over)
    : buffer_size_(options.buffer_size), handover_(std::move(handed_over)), handed_over_(!handover_.empty()) {
    libbpf_set_print(print_libbpf);
    check_btf_present();
    check_privileges();
    check_kernel_features();
    if (options.sample_shift > kMaxSampleShift)
        throw StartupError("sample shift " + std::to_string(options.sample_shift) + " is out of range (0 to " +
                           std::to_string(kMaxSampleShift) + ")");

    const int cpus = libbpf_num_possible_cpus();
    if (cpus <= 0) throw StartupError(describe_errno("cannot count the possible CPUs", cpus));
    // A full ring for each CPU online now, the smallest for the others (a
    // cloud VM may have 64 possible and 4 online): grow_ring() gives a CPU
    // that comes online its full ring.
    const std::optional<std::vector<unsigned>> online = online_cpus();
    for (int cpu = 0; cpu < cpus; ++cpu) {
        const bool is_online =
            !online || std::binary_search(online->begin(), online->end(), static_cast<unsigned>(cpu));
        const std::uint64_t bytes = is_online ? options.buffer_size : kOfflineRingBytes;
        UniqueFd fd = create_ring(bytes);
        if (!fd) {
            throw StartupError(describe_errno("creating the " + std::to_string(bytes) +
                                                  "-byte ring buffer for CPU " + std::to_string(cpu) + " failed",
                                              -errno));
        }
        ring_fds_.push_back(std::move(fd));
        ring_bytes_.push_back(bytes);
    }
    check_rings_nest(ring_fds_.front().get());

    if (options.trace_page || options.trace_vmalloc) {
        std::ifstream kallsyms("/proc/kallsyms");
        allocator_text_ = std::make_unique<core::AllocatorText>(core::read_allocator_text(kallsyms));
        if (allocator_text_->ranges.empty()) {
            spdlog::warn("/proc/kallsyms {}: pages and vmalloc areas are tracked without call sites",
                         allocator_text_->addresses_hidden ? "hides its addresses" : "names no allocator function");
        } else {
            spdlog::debug("{} allocator functions located for page and vmalloc call sites ({} left out)",
                          allocator_text_->ranges.size(), allocator_text_->dropped);
        }
    }
    const std::unique_ptr<btf, void (*)(btf*)> vmlinux(btf__load_vmlinux_btf(), btf__free);
    if (!vmlinux)
        throw StartupError(
            describe_errno(std::string("reading the kernel BTF from ") + kVmlinuxBtf + " failed", -errno));
    attach_ = choose_attach_mode(options.attach, vmlinux.get());
    std::vector<ProgramSpec> specs;
    // A refused program of the page, percpu or vmalloc family leaves that
    // family out (slab memory is what kleakd is for; the others are extra);
    // any other refusal falls back to raw_tp once, in auto mode.
    TracerOptions effective = options;
    std::optional<LoadRefusal> tp_btf_refusal;
    while (const auto refusal = open_and_load(effective, *vmlinux, specs)) {
        if (refusal->family > KLEAK_FAMILY_SLAB) {
            spdlog::warn("{}; {} allocations are not traced", refusal->message,
                         core::family_name(static_cast<core::Family>(refusal->family)));
            if (refusal->family == KLEAK_FAMILY_PAGE) effective.trace_page = false;
            if (refusal->family == KLEAK_FAMILY_PERCPU) effective.trace_percpu = false;
            if (refusal->family == KLEAK_FAMILY_VMALLOC) effective.trace_vmalloc = false;
            continue;
        }
        if (tp_btf_refusal)
            throw StartupError(refusal->message + " (after tp_btf was refused too: " + tp_btf_refusal->message + ")");
        // Only the traced programs have a raw_tp twin, and only auto picks.
        if (options.attach != AttachMode::automatic || attach_.mode != AttachMode::tp_btf || !refusal->has_twin)
            throw StartupError(refusal->message);
        // The probe passed but another program was refused: raw_tp reads
        // every argument as a number, whatever the verifier thinks of its type.
        spdlog::warn("{}; loading the raw_tp programs instead", refusal->message);
        attach_ = {AttachMode::raw_tp, "this kernel refused a tp_btf program: " + refusal->message};
        tp_btf_refusal = refusal;
    }
    if (cpu_down_.program == nullptr) {
        spdlog::info(
            "this kernel has no cpuhp:{} tracepoint (no btf_trace_{} in its BTF): records a CPU holds "
            "when it goes offline reach user space only if it comes back",
            kCpuDownTracepoint, kCpuDownTracepoint);
    }
    spdlog::info("programs attach as {}: {}", attach_mode_name(attach_.mode), attach_.reason);

    const bool adopting = continuity_ == Continuity::adopted;
    if (adopting) {
        adopt_rings();
    } else {
        const int rings_fd = bpf_map__fd(skel_->maps.rings);
        for (int cpu = 0; cpu < cpus; ++cpu) {
            const __u32 key = static_cast<__u32>(cpu);
            const int ring_fd = ring_fds_[static_cast<std::size_t>(cpu)].get();
            if (bpf_map_update_elem(rings_fd, &key, &ring_fd, BPF_ANY) != 0)
                throw StartupError(
                    describe_errno("installing the ring of CPU " + std::to_string(cpu) + " failed", -errno));
        }
    }
    map_pending_flags();
    if (adopting) adopt_stack_sites();  // kept until the stack control sets its own
    if (auto error = set_stack_capture(options.stacks, options.stack_sample_shift, stack_sites_))
        throw StartupError(*error);

    if (adopting) {
        adopt_links(specs);
        spdlog::info("kept the {} programs the previous kleakd left attached, with their rings and maps: nothing was "
                     "detached across the restart",
                     attached_.size());
    } else {
        attach_fresh(specs);
        // Start kmem_cache_free's pushed-and-popped stack empty now that both
        // programs run (see kleak__kmem_cache_free_nested). Adopted programs
        // have run all along: their stack is consistent.
        for (std::size_t cpu = 0; cpu < ring_fds_.size(); ++cpu)
            run_on_cpu(skel_->progs.kleak__reset_freed, cpu);  // fails only offline: nothing to reset there
    }
    if (!adopting && handed_over_) {
        continuity_ = Continuity::replaced;
        spdlog::warn("the programs the previous kleakd left attached do not fit this one ({}): attached anew, the old "
                     "ones detach; what the kernel did between the previous kleakd's exit and now was not traced",
                     handover_refusal_);
    }
    handover_.close_all();

    // Records wait in per-CPU batches until user space flushes them: without
    // a working flush an idle CPU would keep its last records forever.
    if (const int flushed = run_flush(FlushScope::every_cpu); flushed != 0) {
        throw StartupError(describe_errno("running kleak__flush on each CPU (BPF_PROG_TEST_RUN with "
                                          "BPF_F_TEST_RUN_ON_CPU) failed",
                                          flushed) +
                           "; kleakd needs Linux 5.10 or later");
    }
}

void BpfTracer::attach_fresh(std::vector<ProgramSpec>& specs) {
    // Before the kmem programs: no CPU may go offline holding records with
    // nothing in place to flush it. Not fatal: without it only a CPU going
    // offline is affected, as on kernels without the tracepoint.
    if (cpu_down_.program != nullptr && bpf_program__fd(cpu_down_.program) >= 0) {
        *cpu_down_.link = bpf_program__attach(cpu_down_.program);
        if (*cpu_down_.link) {
            flushes_offline_cpus_ = true;
            cpu_down_link_fd_ = bpf_link__fd(*cpu_down_.link);
        } else {
            spdlog::warn(
                "{}; records a CPU holds when it goes offline reach user space only if it comes back",
                describe_errno(std::string("attaching to tracepoint cpuhp:") + kCpuDownTracepoint + " failed", -errno));
        }
    }

    for (ProgramSpec& spec : specs) {
        if (!spec.wanted) continue;
        bpf_link* link = bpf_program__attach(spec.program);
        if (!link) {
            throw StartupError(
                describe_errno("attaching to tracepoint " + full_name(spec) + " failed", -errno));
        }
        *spec.link = link;  // the skeleton destroys it
        attached_.emplace_back(full_name(spec));
        attached_programs_.push_back(spec.program);
        link_fds_.push_back(bpf_link__fd(link));
    }
}

std::string BpfTracer::configured_identity(const TracerOptions& options, const std::vector<ProgramSpec>& specs) const {
    // FNV-1a over what the programs were loaded with: the rodata knobs (text
    // ranges included), the ring and CPU counts, the attach mode and which
    // programs load. A different value means other records or other hooks.
    Fnv1a config;
    config.mix(skel_->rodata, sizeof *skel_->rodata);
    const std::uint64_t sizes[] = {ring_fds_.size(), options.buffer_size, static_cast<std::uint64_t>(attach_.mode)};
    config.mix(sizes, sizeof sizes);
    for (const ProgramSpec& spec : specs)
        if (spec.wanted) config.mix(bpf_program__name(spec.program));
    if (cpu_down_.program != nullptr) config.mix(bpf_program__name(cpu_down_.program));
    return bpf_records_identity() + " config " + config.hex();
}

bool BpfTracer::handover_fits(const std::vector<ProgramSpec>& specs) {
    if (handover_.empty()) return false;
    if (handover_.identity() != identity_) {
        handover_refusal_ = handover_.identity().empty()
                                ? "no identity was handed over"
                                : "loaded as '" + handover_.identity() + "', this kleakd loads '" + identity_ + "'";
        return false;
    }
    ::bpf_map* map = nullptr;
    bpf_object__for_each_map(map, skel_->obj) {
        if (!handover_.has(map_fd_name(bpf_map__name(map)))) {
            handover_refusal_ = std::string("the map ") + bpf_map__name(map) + " was not handed over";
            return false;
        }
    }
    // Each CPU's ring, still the one the `rings` map holds: a ring grown
    // after the set was stored would be read stale.
    const int rings = handover_.peek(map_fd_name(bpf_map__name(skel_->maps.rings)));
    for (std::size_t cpu = 0; cpu < ring_fds_.size(); ++cpu) {
        const __u32 key = static_cast<__u32>(cpu);
        __u32 installed = 0;
        bpf_map_info info{};
        __u32 len = sizeof info;
        const int ring = handover_.peek(ring_fd_name(key));
        if (ring < 0 || bpf_map_lookup_elem(rings, &key, &installed) != 0 ||
            bpf_obj_get_info_by_fd(ring, &info, &len) != 0 || info.id != installed) {
            handover_refusal_ = "the ring of CPU " + std::to_string(cpu) + " was not handed over, or was replaced since";
            return false;
        }
    }
    for (const ProgramSpec& spec : specs) {
        if (spec.wanted && !handover_.has(link_fd_name(bpf_program__name(spec.program)))) {
            handover_refusal_ = "no link of " + full_name(spec) + " was handed over";
            return false;
        }
    }
    handover_refusal_.clear();
    return true;
}

void BpfTracer::reuse_handed_maps() {
    ::bpf_map* map = nullptr;
    bpf_object__for_each_map(map, skel_->obj) {
        const std::string name = map_fd_name(bpf_map__name(map));
        const UniqueFd fd = handover_.take(name);  // bpf_map__reuse_fd keeps its own dup
        if (const int err = bpf_map__reuse_fd(map, fd.get()); err != 0)
            throw StartupError(describe_errno("reusing the map " + name + " the previous kleakd handed over failed", err));
    }
}

void BpfTracer::adopt_rings() {
    for (std::size_t cpu = 0; cpu < ring_fds_.size(); ++cpu) {
        UniqueFd ring = handover_.take(ring_fd_name(static_cast<unsigned>(cpu)));  // handover_fits() said so
        bpf_map_info info{};
        __u32 len = sizeof info;
        if (bpf_obj_get_info_by_fd(ring.get(), &info, &len) != 0)
            throw StartupError(describe_errno("reading the ring of CPU " + std::to_string(cpu) +
                                                  " the previous kleakd handed over failed",
                                              -errno));
        ring_fds_[cpu] = std::move(ring);  // the one created for it is not needed
        ring_bytes_[cpu] = info.max_entries;
    }
}

void BpfTracer::adopt_stack_sites() {
    const int fd = bpf_map__fd(skel_->maps.stack_sites);
    std::uint64_t key = 0;
    std::uint64_t next = 0;
    for (const void* previous = nullptr; bpf_map_get_next_key(fd, previous, &next) == 0; previous = &key) {
        stack_sites_.push_back(next);
        key = next;
    }
    std::sort(stack_sites_.begin(), stack_sites_.end());
}

void BpfTracer::adopt_links(const std::vector<ProgramSpec>& specs) {
    if (cpu_down_.program != nullptr) {
        adopted_cpu_down_link_ = handover_.take(link_fd_name(bpf_program__name(cpu_down_.program)));
        flushes_offline_cpus_ = static_cast<bool>(adopted_cpu_down_link_);
        cpu_down_link_fd_ = adopted_cpu_down_link_.get();
    }
    for (const ProgramSpec& spec : specs) {
        if (!spec.wanted) continue;
        UniqueFd link = handover_.take(link_fd_name(bpf_program__name(spec.program)));  // handover_fits() said so
        // The program that runs is the linked one, not the copy loaded here:
        // its run counts are what program_stats() reports.
        bpf_link_info info{};
        __u32 len = sizeof info;
        UniqueFd program;
        if (bpf_obj_get_info_by_fd(link.get(), &info, &len) == 0) program = UniqueFd(bpf_prog_get_fd_by_id(info.prog_id));
        attached_.emplace_back(full_name(spec));
        attached_programs_.push_back(spec.program);
        link_fds_.push_back(link.get());
        adopted_links_.push_back(std::move(link));
        adopted_prog_fds_.push_back(std::move(program));
    }
}

int BpfTracer::program_fd_for_stats(std::size_t i) const {
    return adopted_prog_fds_.empty() ? bpf_program__fd(attached_programs_[i]) : adopted_prog_fds_[i].get();
}

std::vector<std::pair<std::string, int>> BpfTracer::handover_fds() const {
    std::vector<std::pair<std::string, int>> out;
    ::bpf_map* map = nullptr;
    bpf_object__for_each_map(map, skel_->obj) out.emplace_back(map_fd_name(bpf_map__name(map)), bpf_map__fd(map));
    for (std::size_t i = 0; i < attached_programs_.size(); ++i)
        if (link_fds_[i] >= 0) out.emplace_back(link_fd_name(bpf_program__name(attached_programs_[i])), link_fds_[i]);
    for (std::size_t cpu = 0; cpu < ring_fds_.size(); ++cpu)
        out.emplace_back(ring_fd_name(static_cast<unsigned>(cpu)), ring_fds_[cpu].get());
    if (cpu_down_link_fd_ >= 0) out.emplace_back(link_fd_name(bpf_program__name(cpu_down_.program)), cpu_down_link_fd_);
    return out;
}

const char* continuity_name(Continuity c) {
    switch (c) {
        case Continuity::fresh: return "fresh";
        case Continuity::adopted: return "adopted";
        case Continuity::replaced: return "replaced";
    }
    return "?";
}

std::optional<BpfTracer::LoadRefusal> BpfTracer::open_and_load(const TracerOptions& options, const ::btf& vmlinux,
                                                    std::vector<ProgramSpec>& specs) {
    attached_.clear();
    attached_programs_.clear();
    link_fds_.clear();
    skel_.reset(kleak_bpf__open());
    if (!skel_) throw StartupError(describe_errno("opening the BPF object failed", -errno));
    const auto cpus = static_cast<__u32>(ring_fds_.size());

    // Wake the consumer only when a ring is a quarter full; the daemon drains
    // on a timer otherwise (see wakeup_backlog_bytes in kleak.bpf.c). The
    // other three quarters are the time the consumer has to get a CPU: at
    // 6M records/s an 8M ring fills in ~65 ms, and a busy machine can keep a
    // woken consumer waiting for a good part of that. Small rings keep room
    // for at least two batches past the threshold.
    skel_->rodata->wakeup_backlog_bytes =
        options.wakeup_backlog_bytes != 0
            ? options.wakeup_backlog_bytes
            : std::min(options.buffer_size / 4, options.buffer_size - 2 * (KLEAK_BATCH_BYTES + 8));
    skel_->rodata->full_ring_bytes = options.buffer_size;
    skel_->rodata->emit_records = options.emit_records;
    skel_->rodata->sample_shift = options.sample_shift;
    skel_->rodata->min_size = options.min_size;
    skel_->rodata->track_movable_pages = options.track_movable_pages;
    skel_->rodata->page_shift = static_cast<__u8>(__builtin_ctzl(static_cast<unsigned long>(::sysconf(_SC_PAGESIZE))));
    if (allocator_text_) {
        // Where the allocators' functions are, for the call sites of pages
        // and vmalloc areas (kleak_site.h); read once, at start.
        const std::vector<kleak_text_range> table = core::padded_text_table(allocator_text_->ranges);
        static_assert(sizeof(skel_->rodata->text_ranges) == KLEAK_TEXT_RANGES * sizeof(kleak_text_range));
        std::memcpy(const_cast<kleak_text_range*>(skel_->rodata->text_ranges), table.data(),
                    sizeof(skel_->rodata->text_ranges));
    }

    int err = bpf_map__set_max_entries(skel_->maps.rings, cpus);
    if (err)
        throw StartupError(describe_errno("sizing the rings map to " + std::to_string(cpus) + " CPUs failed", err));
    err = bpf_map__set_max_entries(skel_->maps.pending, cpus);
    if (err)
        throw StartupError(describe_errno("sizing the pending map to " + std::to_string(cpus) + " CPUs failed", err));
    err = bpf_map__set_inner_map_fd(skel_->maps.rings, ring_fds_.front().get());
    if (err) throw StartupError(describe_errno("setting the ring template failed", err));

    const AttachMode mode = attach_.mode;
    specs = program_specs(*skel_, mode, options);
    auto& skel = *skel_;
    free_primary_ = ProgramVariant{KLEAK_VARIANT(skel, mode, kmem_cache_free)}.program;
    free_nested_ = {KLEAK_VARIANT(skel, mode, kmem_cache_free_nested)};
    cpu_down_ = {KLEAK_VARIANT(skel, mode, cpu_down)};
    std::vector<std::string> missing;
    // A family other than slab is traced only when every one of its
    // tracepoints is there, with the arguments its programs read.
    bool family_usable[KLEAK_FAMILY_COUNT] = {true, true, true, true};
    for (const ProgramSpec& spec : specs) {
        if (!spec.wanted || spec.family == KLEAK_FAMILY_SLAB) continue;
        const int arity = tracepoint_arity(&vmlinux, spec.tracepoint);
        if (arity < 0 || (spec.arity != 0 && arity != spec.arity)) {
            if (family_usable[spec.family]) {
                spdlog::warn("this kernel's {} {} (no btf_trace_{} with {} arguments in its BTF): {} allocations "
                             "are not traced",
                             full_name(spec), arity < 0 ? "tracepoint is missing" : "tracepoint has another layout",
                             spec.tracepoint, spec.arity,
                             core::family_name(static_cast<core::Family>(spec.family)));
            }
            family_usable[spec.family] = false;
        }
    }
    for (ProgramSpec& spec : specs) {
        bpf_program__set_autoload(spec.other, false);
        const bool present = tracepoint_in_btf(&vmlinux, spec.tracepoint) && family_usable[spec.family];
        if (spec.wanted && spec.required && !present) missing.push_back(full_name(spec));
        if (!spec.wanted || !present) {
            bpf_program__set_autoload(spec.program, false);
            spec.wanted = false;
        }
    }
    for (bool& attached : families_attached_) attached = false;
    for (const ProgramSpec& spec : specs)
        if (spec.wanted) families_attached_[spec.family] = true;
    bpf_program__set_autoload(cpu_down_.other, false);
    if (!tracepoint_in_btf(&vmlinux, kCpuDownTracepoint)) {
        bpf_program__set_autoload(cpu_down_.program, false);
        cpu_down_.program = nullptr;
    }
    if (!missing.empty()) {
        std::string list;
        for (const auto& m : missing) list += (list.empty() ? "" : ", ") + m;
        throw StartupError("this kernel lacks the tracepoint(s) " + list +
                           " (no btf_trace_* type in its BTF); kleakd cannot trace that here");
    }

    identity_ = configured_identity(options, specs);
    continuity_ = Continuity::fresh;
    if (handover_fits(specs)) {
        reuse_handed_maps();
        continuity_ = Continuity::adopted;
    }

    VerifierLogs logs(*skel_->obj);
    err = kleak_bpf__load(skel_.get());
    if (err == 0) return std::nullopt;
    // EACCES and EINVAL are the verifier's answers; any other failure (a
    // JIT out of memory, say) is not a refusal even when a log was written.
    // E2BIG from a load is the verifier giving up on a program too complex
    // for it (a million instructions walked): a refusal too.
    const auto refused = err == -EACCES || err == -EINVAL || err == -E2BIG ? logs.refused_program() : std::nullopt;
    if (!refused) throw StartupError(describe_load_failure(err));
    spdlog::debug("the verifier's log of {}:\n{}", refused->program, refused->log);
    if (locked_down_for_confidentiality())
        throw StartupError(describe_load_failure(-EPERM) + " (the verifier refused " + refused->program + ": " +
                           verifier_key_lines(refused->log) + ")");
    bool has_twin = false;
    int family = -1;
    for (const ProgramSpec& spec : specs) {
        if (refused->program != bpf_program__name(spec.program)) continue;
        has_twin = true;
        family = spec.family;
    }
    return LoadRefusal{describe_refusal(*refused, attach_mode_name(mode), kernel_release()), has_twin, family};
}

BpfTracer::~BpfTracer() = default;

void BpfTracer::map_pending_flags() {
    const std::size_t length = ring_fds_.size() * sizeof(kleak_pending_slot);
    void* address = ::mmap(nullptr, length, PROT_READ, MAP_SHARED, bpf_map__fd(skel_->maps.pending), 0);
    if (address == MAP_FAILED) {
        // Not fatal: only the IPIs to idle CPUs are at stake, not records.
        spdlog::warn("mapping the pending map ({} bytes, BPF_F_MMAPABLE) read-only failed: {}; every drain "
                     "flushes every CPU, idle or not",
                     length, std::strerror(errno));
        return;
    }
    pending_ = {static_cast<const kleak_pending_slot*>(address), PendingUnmapper{length}};
}

bool BpfTracer::batch_pending(unsigned cpu) const {
    if (!pending_ || cpu >= cpu_count()) return true;
    // BPF programs write the flag, not a C++ thread: what matters is one
    // untorn 4-byte load, made afresh on every call. A GCC atomic builtin
    // gives that on const memory (std::atomic_ref<const T> is C++26), as
    // ring_consumer.cpp reads the ring positions. Acquire, not relaxed:
    // kleak.bpf.c clears the flag after committing the batch to the ring
    // with a fully ordered xchg, so reading 0 with acquire guarantees the
    // drain that follows sees those records, on weakly ordered CPUs too. It
    // costs a plain load on x86.
    return __atomic_load_n(&pending_.get()[cpu].pending, __ATOMIC_ACQUIRE) != 0;
}

UniqueFd BpfTracer::create_ring(std::uint64_t bytes) {
    return UniqueFd(bpf_map_create(BPF_MAP_TYPE_RINGBUF, "kleak_ring", 0, 0, static_cast<__u32>(bytes), nullptr));
}

int BpfTracer::install_ring(unsigned cpu, UniqueFd ring, std::uint64_t bytes) {
    if (cpu >= ring_fds_.size()) return -EINVAL;
    const int rings_fd = bpf_map__fd(skel_->maps.rings);
    const int fd = ring.get();
    if (bpf_map_update_elem(rings_fd, &cpu, &fd, BPF_ANY) != 0) return -errno;
    // The old ring stays open: its consumer drains what was in flight.
    retired_ring_fds_.push_back(std::move(ring_fds_[cpu]));
    ring_fds_[cpu] = std::move(ring);
    ring_bytes_[cpu] = bytes;
    return 0;
}

std::vector<unsigned> BpfTracer::small_ring_cpus() const {
    std::vector<unsigned> cpus;
    for (unsigned cpu = 0; cpu < ring_bytes_.size(); ++cpu)
        if (ring_bytes_[cpu] < buffer_size_) cpus.push_back(cpu);
    return cpus;
}

std::vector<int> BpfTracer::retired_ring_fds() const {
    std::vector<int> fds;
    for (const UniqueFd& fd : retired_ring_fds_) fds.push_back(fd.get());
    return fds;
}

std::vector<int> BpfTracer::ring_fds() const {
    std::vector<int> fds;
    for (const UniqueFd& fd : ring_fds_) fds.push_back(fd.get());
    return fds;
}

std::vector<std::uint64_t> BpfTracer::read_per_cpu_counter(const bpf_map* map, std::uint32_t key) const {
    // A per-CPU array returns one 8-byte-aligned value per possible CPU.
    std::vector<std::uint64_t> per_cpu(ring_fds_.size(), 0);
    if (bpf_map_lookup_elem(bpf_map__fd(map), &key, per_cpu.data()) != 0) return {};
    return per_cpu;
}

std::vector<std::uint64_t> BpfTracer::read_drops() const {
    std::vector<std::uint64_t> total;
    for (std::uint32_t slot = 0; slot < KLEAK_DROPS_SLOTS; ++slot) {
        const std::vector<std::uint64_t> per_cpu = read_per_cpu_counter(skel_->maps.drops, slot);
        if (per_cpu.empty()) return {};
        total.resize(per_cpu.size(), 0);
        for (std::size_t cpu = 0; cpu < per_cpu.size(); ++cpu) total[cpu] += per_cpu[cpu];
    }
    return total;
}

std::vector<std::uint64_t> BpfTracer::read_drops_by_family() const {
    std::vector<std::uint64_t> out(KLEAK_FAMILY_COUNT, 0);
    for (std::uint32_t f = 0; f < KLEAK_FAMILY_COUNT; ++f) {
        const std::vector<std::uint64_t> per_cpu = read_per_cpu_counter(skel_->maps.drops, f);
        if (per_cpu.empty()) return {};
        for (const std::uint64_t n : per_cpu) out[f] += n;
    }
    return out;
}

std::vector<std::uint64_t> BpfTracer::read_page_counts() const {
    // One struct of KLEAK_PAGE_COUNTS counters per possible CPU.
    std::vector<std::uint64_t> per_cpu(ring_fds_.size() * KLEAK_PAGE_COUNTS, 0);
    const __u32 key = 0;
    if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.page_counts), &key, per_cpu.data()) != 0) return {};
    std::vector<std::uint64_t> out(KLEAK_PAGE_COUNTS, 0);
    for (std::size_t i = 0; i < per_cpu.size(); ++i) out[i % KLEAK_PAGE_COUNTS] += per_cpu[i];
    return out;
}

std::optional<core::CacheInfo> BpfTracer::cache_info(std::uint64_t cache) const {
    if (!skel_ || !skel_->bss) return std::nullopt;
    std::uint64_t args[1] = {cache};
    LIBBPF_OPTS(bpf_test_run_opts, opts, .ctx_in = args, .ctx_size_in = sizeof args);
    if (bpf_prog_test_run_opts(bpf_program__fd(skel_->progs.kleak__cache_info), &opts) != 0) return std::nullopt;
    const ::kleak_cache_info& info = skel_->bss->cache_info;
    if (!info.found) return std::nullopt;
    core::CacheInfo out;
    out.name.assign(info.name, ::strnlen(info.name, sizeof info.name));
    out.object_size = info.object_size;
    out.reclaimable = info.reclaimable != 0;
    return out;
}

std::optional<std::string> BpfTracer::set_stack_capture(core::StackMode mode, std::uint32_t sample_shift,
                                                        std::span<const std::uint64_t> sites) {
    std::vector<std::uint64_t> wanted(sites.begin(), sites.end());
    std::sort(wanted.begin(), wanted.end());
    wanted.erase(std::unique(wanted.begin(), wanted.end()), wanted.end());
    if (wanted.size() > KLEAK_STACK_SITES_MAX) wanted.resize(KLEAK_STACK_SITES_MAX);
    const int sites_fd = bpf_map__fd(skel_->maps.stack_sites);
    // Removed first, so the hash never needs room for both sets.
    std::vector<std::uint64_t> gone;
    std::set_difference(stack_sites_.begin(), stack_sites_.end(), wanted.begin(), wanted.end(), std::back_inserter(gone));
    for (const std::uint64_t site : gone) bpf_map_delete_elem(sites_fd, &site);
    const __u8 yes = 1;
    for (const std::uint64_t site : wanted) {
        if (bpf_map_update_elem(sites_fd, &site, &yes, BPF_ANY) != 0)
            return describe_errno("adding a call site to the BPF map stack_sites failed", -errno);
    }
    stack_sites_ = std::move(wanted);
    kleak_stack_settings settings{};
    settings.mode = static_cast<__u32>(mode);
    settings.sample_shift = std::min(sample_shift, kMaxSampleShift);
    const core::SiteBits bits = core::site_bits(stack_sites_);
    std::copy(bits.begin(), bits.end(), settings.site_bits);
    const __u32 key = 0;
    if (bpf_map_update_elem(bpf_map__fd(skel_->maps.stack_settings), &key, &settings, BPF_ANY) != 0)
        return describe_errno("writing the BPF map stack_settings failed", -errno);
    return std::nullopt;
}

std::vector<std::uint64_t> BpfTracer::stack_frames(std::uint32_t stack_id) const {
    std::vector<std::uint64_t> frames(KLEAK_STACK_DEPTH, 0);
    if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.stacks), &stack_id, frames.data()) != 0) return {};
    // The kernel zero-fills the slots past the stack's depth.
    while (!frames.empty() && frames.back() == 0) frames.pop_back();
    return frames;
}

std::vector<StackCounts> BpfTracer::read_stack_counts() const {
    std::vector<StackCounts> out(KLEAK_FAMILY_COUNT);
    for (std::uint32_t f = 0; f < KLEAK_FAMILY_COUNT; ++f) {
        std::uint64_t* fields[] = {&out[f].captured, &out[f].collided, &out[f].failed};
        for (std::uint32_t kind = 0; kind < 3; ++kind) {
            const std::vector<std::uint64_t> per_cpu =
                read_per_cpu_counter(skel_->maps.stack_counts, f * KLEAK_STACK_COUNT_KINDS + kind);
            if (per_cpu.empty()) return {};
            for (const std::uint64_t n : per_cpu) *fields[kind] += n;
        }
    }
    return out;
}

std::uint64_t BpfTracer::read_recovered() const {
    std::uint64_t total = 0;
    for (const std::uint64_t n : read_per_cpu_counter(skel_->maps.recovered)) total += n;
    return total;
}

std::vector<ProgramStats> BpfTracer::program_stats() const {
    std::vector<ProgramStats> stats;
    const std::uint64_t recovered = read_recovered();
    for (std::size_t i = 0; i < attached_programs_.size(); ++i) {
        bpf_prog_info info{};
        __u32 len = sizeof info;
        if (bpf_obj_get_info_by_fd(program_fd_for_stats(i), &info, &len) != 0) continue;
        ProgramStats p{attached_[i], info.run_cnt, info.run_time_ns, info.recursion_misses, info.recursion_misses, 0};
        // The nested program recorded some of the events the kernel skipped
        // the primary for: those are not lost. Its own misses are not losses
        // either: it only matters while the primary runs, and an event that
        // then nests twice is already a miss of the primary's.
        if (attached_programs_[i] == free_primary_) {
            p.recovered = recovered;
            p.recursion_misses -= std::min(recovered, p.kernel_recursion_misses);
        }
        if (attached_programs_[i] == free_nested_.program) p.recursion_misses = 0;
        stats.push_back(std::move(p));
    }
    return stats;
}

void BpfTracer::detach() {
    // The nested program goes first: alone, it would record every
    // kmem_cache_free as one the primary missed (correctly, but counted as
    // recovered misses that the kernel never counted).
    bpf_link__destroy(*free_nested_.link);
    *free_nested_.link = nullptr;
    for (std::size_t i = 0; i < adopted_links_.size(); ++i)
        if (attached_programs_[i] == free_nested_.program) adopted_links_[i].reset();
    adopted_links_.clear();
    adopted_cpu_down_link_.reset();
    kleak_bpf__detach(skel_.get());
    // Unregistering a tracepoint probe does not wait for runs already in
    // progress on other CPUs; one could still write its batch after the
    // final flush. Tracepoint probes run with preemption off, so an RCU
    // grace period, which MEMBARRIER_CMD_GLOBAL waits for, outlasts them.
    if (::syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) != 0) {
        // It is refused with EINVAL on a kernel booted with nohz_full=. A
        // probe run takes microseconds and cannot be preempted, only
        // interrupted: 20 ms outlasts it by far.
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

int BpfTracer::run_flush(FlushScope scope) {
    int first_error = 0;
    for (std::size_t cpu = 0; cpu < ring_fds_.size(); ++cpu) {
        // Skipping a CPU whose flag reads 0 loses nothing. From a few
        // nanoseconds after a batch's first record is stamped until the batch
        // is in the ring, its flag reads 1 (kleak.bpf.c). So a 0 here means
        // every record stamped before the drain started, less its holdback
        // (10 ms), is in the ring already. A record that goes in after this
        // read is newer than that, and the daemon releases only records older
        // than drain start minus the holdback: it is due at a later drain. It
        // leaves the batch by the age flush (2 ms after the batch's first
        // record, at the CPU's next event) or, on a CPU that went idle, at
        // the next drain, which reads its flag as 1.
        if (scope == FlushScope::pending && !batch_pending(static_cast<unsigned>(cpu))) {
            ++skipped_cpus_;
            continue;
        }
        // kleak__flush returns 1 when it interrupted a kleak program holding
        // the batch: that program flushes when it resumes, microseconds
        // later. Wait for it, or those records would miss this drain.
        // ENXIO: the CPU is offline. kleak__cpu_down flushed it on its way
        // down, and cleared its flag, so flush_batches() skips it. Without
        // that program (see flushes_offline_cpus()) what it held stays in its
        // batch until it comes back, and arrives late.
        int result = 0;
        for (int busy_rounds = 0; busy_rounds < 1000; ++busy_rounds) {
            result = run_on_cpu(skel_->progs.kleak__flush, cpu);
            if (result != 1) break;
        }
        if (result >= 0) ++flushed_cpus_;
        if (result < 0 && result != -ENXIO && first_error == 0) first_error = result;
    }
    return first_error;
}

int BpfTracer::flush_batches() { return flush(FlushScope::pending); }

int BpfTracer::flush_all_batches() { return flush(FlushScope::every_cpu); }

int BpfTracer::flush(FlushScope scope) {
    const int err = run_flush(scope);
    if (err != 0 && flush_failures_++ % 1000 == 0) {  // rate-limited: once per 1000 drains
        spdlog::warn("{}; records of idle CPUs reach user space late ({} times so far)",
                     describe_errno("flushing the per-CPU record batches (BPF_PROG_TEST_RUN) failed", err),
                     flush_failures_);
    }
    return err;
}

}  // namespace kleak
