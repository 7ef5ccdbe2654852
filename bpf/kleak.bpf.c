// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * kleak.bpf.c - allocation tracing for kleakd: slab, pages, percpu, vmalloc.
 *
 * One program per kmem tracepoint, attached as BTF raw tracepoints (tp_btf,
 * or plain raw_tp where the verifier refuses those: see KLEAK_TRACED):
 * cheaper than classic tracepoints, and the kernel only skips a program when
 * that same program nests on the CPU, not whenever any BPF program runs
 * there (the bcc memleak "lost frees in IRQ" bug, iovisor/bcc#2997).
 *
 * Each program writes a fixed-size record (bpf/kleak_abi.h) into its own
 * CPU's batch, a per-CPU staging buffer that goes into the CPU's ring buffer
 * with one bpf_ringbuf_output() when it is full, when its oldest record gets
 * old, when user space runs kleak__flush on that CPU before a drain, or when
 * the CPU goes offline (kleak__cpu_down). One ring operation per ~100
 * records instead of per record: the reserve, commit and fill-level query
 * cost more than writing the record itself.
 * The rings are created by user space and installed in the `rings`
 * array-of-maps before the programs are attached.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "kleak_abi.h"
#include "kleak_site.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/*
 * Backlog (bytes not yet consumed) above which a record wakes the consumer.
 * Below it records are submitted with BPF_RB_NO_WAKEUP and the daemon drains
 * on a timer: a wake-up per record would cost more than the record itself.
 * Set through rodata before load; 0 means "always wake up".
 */
const volatile __u64 wakeup_backlog_bytes = 0;

/*
 * The configured ring size (buffer_size). A ring smaller than it is the
 * small ring of a CPU offline at start (KLEAK_SMALL_RING_BYTES), not grown
 * yet: it would never reach wakeup_backlog_bytes, and holds only four
 * batches, so it wakes its consumer at every batch (for at most the second
 * the daemon takes to grow it). A user's ring of that same size keeps
 * wakeup_backlog_bytes (--wakeup-backlog).
 */
const volatile __u64 full_ring_bytes = 0;

/*
 * Cost knobs, set through rodata before load. The verifier knows their
 * values and removes the branches they turn off, so a knob at its default
 * costs next to nothing. bench/RESULTS.md has what each one buys.
 *
 * emit_records: false keeps every program attached but makes it return at
 * once: the cost of the hooks alone, the floor any tracer on these
 * tracepoints pays (`kleakd trace --no-emit`, a diagnostic).
 */
const volatile bool emit_records = true;

/*
 * sample_shift: keep an allocation, and every free, only when the pointer's
 * hash falls in 1/2^sample_shift of the hash space. The decision depends on
 * the pointer alone, so an allocation and its free are kept or skipped
 * together and sampled pairs still match; counts and outstanding bytes
 * scale by 2^sample_shift. 0 keeps everything. At most 32 (user space checks).
 */
const volatile __u32 sample_shift = 0;

/*
 * min_size: skip allocations that requested fewer bytes. A free carries no
 * size, so frees cannot be filtered the same way without a map of what was
 * skipped: the frees of skipped allocations still reach user space, where
 * they count as unmatched frees, and every free still costs a record. It
 * saves ring space and tracker work for the small objects, not per-free
 * cost; sample_shift keeps pairs matched and cuts both. 0 keeps everything.
 * Such a free reallocated on another CPU within its stamp window (README,
 * "How records are timed") can also hide that reallocation.
 */
const volatile __u32 min_size = 0;

/*
 * Where the allocators' functions lie in kernel text (kleak_site.h), sorted;
 * filled by user space from /proc/kallsyms before load. Unused slots start
 * at ~0, so a search never ends in one.
 */
const volatile struct kleak_text_range text_ranges[KLEAK_TEXT_RANGES] = {};

/* log2 of the page size, for page records' sizes (user space sets it). */
const volatile __u8 page_shift = 12;

/*
 * track_movable_pages: record MIGRATE_MOVABLE page allocations too (process
 * memory, page cache, tmpfs) instead of only counting them. Off by default:
 * they come and go at page-cache rates with their processes and files, and
 * are not kernel memory in the leak sense (README, "Allocator families").
 */
const volatile bool track_movable_pages = false;

struct ring_template {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096); /* user space installs the real rings */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1); /* user space sizes it to the possible CPUs */
	__type(key, __u32);
	__array(values, struct ring_template);
} rings SEC(".maps");

/*
 * Records lost because the CPU's ring was full (or not installed), per
 * allocator family (enum kleak_family) and printk (KLEAK_DROPS_PRINTK).
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KLEAK_DROPS_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

/*
 * A batch's oldest record may wait this long for more records before the
 * batch is pushed into the ring. It must stay well under the daemon's merge
 * holdback (10 ms): a record reaching user space later than that is `late`.
 * An idle CPU adds nothing to age its batch; user space flushes it instead.
 */
#define BATCH_MAX_AGE_NS (2 * 1000 * 1000ULL)

/* Room for records in a batch; the rest is kept for its closing time mark. */
#define BATCH_RECORD_BYTES (KLEAK_BATCH_BYTES - KLEAK_TIME_MARK_BYTES)

/* Deepest nesting of kmem_cache_free the nested program tells apart (contexts: task, softirq, hardirq, NMI). */
#define FREED_STACK 4

struct batch {
	__u32 len;            /* bytes of records in data[] */
	__u32 pad0;
	__u16 records[KLEAK_FAMILY_COUNT]; /* per family: what a failed flush adds to `drops` */
	__u64 oldest_ts;      /* of data[]'s first record */
	/*
	 * A kleak program is writing data[] on this CPU. A program that
	 * interrupts it (an IRQ that allocates or frees) must not touch data[]:
	 * it writes its record straight into the ring instead. Only this CPU
	 * writes these fields, and a program is never preempted, only
	 * interrupted, so program order (plus compiler barriers) is enough.
	 */
	__u8 busy;
	__u8 flush_pending;   /* kleak__flush found the batch busy: its writer flushes */
	__u8 freed_depth;     /* entries in freed[] (see kleak__kmem_cache_free_nested) */
	__u8 unstamped;       /* frees since stamp_ns that carry it as a lower bound */
	__u8 pad[4];
	__u64 stamp_ns;       /* the last clock reading taken for data[] */
	__u64 freed[FREED_STACK];
	__u8 data[KLEAK_BATCH_BYTES];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct batch);
} batches SEC(".maps");

/*
 * Whether each CPU's batch holds records, read by user space through a
 * read-only mapping: a drain flushes only the CPUs whose flag is set, and an
 * idle CPU (a nohz_full one too) is not sent an IPI ten times a second just
 * to find its batch empty. A slot is written only by its own CPU, twice per
 * batch: set when the first record goes in, cleared when the batch goes
 * into the ring. Never per record: that path stays as it was.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1); /* user space sizes it to the possible CPUs */
	__type(key, __u32);
	__type(value, struct kleak_pending_slot);
} pending SEC(".maps");

/* Kernel stacks (kleak_abi.h, "Kernel stacks of allocations"). */
struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, KLEAK_STACK_ENTRIES);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, KLEAK_STACK_DEPTH * sizeof(__u64));
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kleak_stack_settings);
} stack_settings SEC(".maps");

/* Call sites whose allocations get a stack in KLEAK_STACKS_SUSPECTS mode. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KLEAK_STACK_SITES_MAX);
	__type(key, __u64);
	__type(value, __u8);
} stack_sites SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KLEAK_STACK_COUNTS);
	__type(key, __u32);
	__type(value, __u64);
} stack_counts SEC(".maps");

/* The process behind each tgid as last recorded (kleak_abi.h, KLEAK_PROCESS). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, KLEAK_PROCESSES_MAX);
	__type(key, __u32);
	__type(value, struct kleak_process_seen);
} processes SEC(".maps");

/* Nested kmem_cache_free events recorded by kleak__kmem_cache_free_nested. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} recovered SEC(".maps");

/* Page allocations counted but not recorded, in pages (enum kleak_page_count). */
struct page_counts {
	__u64 n[KLEAK_PAGE_COUNTS];
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct page_counts);
} page_counts SEC(".maps");

/*
 * Where a stack is read to find a call site, one buffer per family that
 * reads stacks: a page allocation in an interrupt may run while the vmalloc
 * program holds its stack.
 */
struct site_scratch {
	__u64 page[KLEAK_SITE_FRAMES];
	__u64 vmalloc[KLEAK_SITE_FRAMES];
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct site_scratch);
} site_scratch SEC(".maps");

/* Where a printk record is built before it is copied, at its real size, into the ring. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kleak_printk_record);
} printk_scratch SEC(".maps");

/* ZERO_OR_NULL_PTR(): NULL (failed allocation, kfree(NULL)) and ZERO_SIZE_PTR. */
static __always_inline bool zero_or_null(const void *ptr)
{
	return (unsigned long)ptr <= 16;
}

/*
 * Whether sample_shift drops this pointer. Fibonacci hashing: slab pointers
 * are aligned, so their low bits carry nothing; the multiply spreads every
 * bit into the top ones, which decide.
 */
static __always_inline bool sampled_out(const void *ptr)
{
	if (sample_shift == 0)
		return false;
	return (((__u64)ptr * 0x9E3779B97F4A7C15ULL) >> (64 - (sample_shift & 63))) != 0;
}

/* Everything a program checks before it builds a record. */
static __always_inline bool skip(const void *ptr)
{
	return !emit_records || zero_or_null(ptr) || sampled_out(ptr);
}

static __always_inline void count_drops(__u32 slot, __u64 records)
{
	__u64 *n = bpf_map_lookup_elem(&drops, &slot);

	if (n)
		*n += records; /* per-CPU slot, no atomics needed */
}

/* The family of a record kind (a constant wherever the kind is one). */
static __always_inline __u32 kind_family(__u16 kind)
{
	switch (kind) {
	case KLEAK_PAGE_ALLOC:
	case KLEAK_PAGE_FREE:
		return KLEAK_FAMILY_PAGE;
	case KLEAK_PERCPU_ALLOC:
	case KLEAK_PERCPU_FREE:
		return KLEAK_FAMILY_PERCPU;
	case KLEAK_VMALLOC_ALLOC:
	case KLEAK_VMALLOC_FREE:
		return KLEAK_FAMILY_VMALLOC;
	default:
		return KLEAK_FAMILY_SLAB;
	}
}

static __always_inline void *this_cpu_ring(void)
{
	__u32 cpu = bpf_get_smp_processor_id();

	return bpf_map_lookup_elem(&rings, &cpu);
}

static __always_inline __u64 submit_flags(void *ring)
{
	if (bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) >= wakeup_backlog_bytes)
		return BPF_RB_FORCE_WAKEUP;
	/* BPF_RB_RING_SIZE: Linux 5.8, with the ring buffer itself. */
	if (bpf_ringbuf_query(ring, BPF_RB_RING_SIZE) < full_ring_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

static __always_inline struct batch *this_cpu_batch(void)
{
	__u32 key = 0;

	return bpf_map_lookup_elem(&batches, &key);
}

/*
 * A volatile store: user space reads the slot while this CPU writes it, so
 * the compiler must emit exactly one 4-byte store, where it stands.
 */
static __always_inline void set_pending(__u32 value)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct kleak_pending_slot *slot = bpf_map_lookup_elem(&pending, &cpu);

	if (slot)
		*(volatile __u32 *)&slot->pending = value;
}

/*
 * tgid stays 0 in free records, and in allocation records without a stack:
 * bpf_get_current_pid_tgid() costs ~12 ns per event here, so only an
 * allocation that pays for a stack pays for its process too.
 */
static __always_inline void fill_header(struct kleak_record_header *hdr, __u64 now, __u16 kind)
{
	hdr->ts_ns = now;
	hdr->kind = kind;
	hdr->flags = 0;
	hdr->tgid = 0;
}

/*
 * Pushes the batch into this CPU's ring. The caller owns the batch (busy).
 * may_wake false: never wake the consumer (see kleak__cpu_down).
 */
static __always_inline void flush(struct batch *b, bool may_wake)
{
	__u64 len = b->len;
	void *ring;

	/*
	 * The verifier must see the bounds check on the very register passed
	 * to bpf_ringbuf_output(). Left to itself, clang checks one
	 * zero-extended copy of a value it already knows (the caller's
	 * b->len + size) and passes another, which the verifier then rejects
	 * as unbounded. Opaque and already 64-bit, len stays one register.
	 */
	barrier_var(len);
	if (len == 0 || len > BATCH_RECORD_BYTES)
		return;
	if (b->unstamped) {
		/*
		 * Frees after the last reading carry it as a lower bound: the
		 * mark is their upper one (one clock read per batch at most).
		 */
		struct kleak_time_mark *mark = (void *)(b->data + len);

		fill_header(&mark->hdr, bpf_ktime_get_ns(), KLEAK_TIME_MARK);
		len += sizeof(*mark);
		b->unstamped = 0;
	}
	ring = this_cpu_ring();
	if (!ring || bpf_ringbuf_output(ring, b->data, len, may_wake ? submit_flags(ring) : BPF_RB_NO_WAKEUP)) {
		for (__u32 f = 0; f < KLEAK_FAMILY_COUNT; f++)
			if (b->records[f])
				count_drops(f, b->records[f]);
	}
	b->len = 0;
	for (__u32 f = 0; f < KLEAK_FAMILY_COUNT; f++)
		b->records[f] = 0;
	/*
	 * After bpf_ringbuf_output(): its commit is a fully ordered xchg, so a
	 * reader that sees 0 (and acquires it) finds the records in the ring.
	 */
	set_pending(0);
}

/*
 * Where the next `size`-byte record goes: the batch (flushed first if the
 * record would not fit), or NULL when another kleak program owns the batch
 * on this CPU, and the caller writes to the ring directly (reserve_direct).
 * A non-NULL result leaves the batch busy until commit_batched().
 */
static __always_inline void *reserve_batched(struct batch *b, __u32 size)
{
	__u32 len;

	if (b->busy)
		return NULL;
	b->busy = 1;
	barrier(); /* busy is set before data[] changes */
	if (b->len > BATCH_RECORD_BYTES - size)
		flush(b, true);
	len = b->len;
	if (len > BATCH_RECORD_BYTES - size) { /* for the verifier: flush() emptied it */
		b->busy = 0;
		return NULL;
	}
	return b->data + len;
}

/*
 * The time a record in the reserved slot carries, and whether it is only a
 * lower bound (KLEAK_TS_LOWER_BOUND): a free leaves the clock alone when its
 * batch already holds a reading and fewer than KLEAK_FREES_PER_STAMP frees
 * since. Allocations always read it: their age is what users query.
 */
static __always_inline __u64 stamp(struct batch *b, bool is_free, __u16 *flags)
{
	__u64 now;

	if (is_free && b->len != 0 && b->unstamped < KLEAK_FREES_PER_STAMP) {
		b->unstamped += 1;
		*flags = KLEAK_TS_LOWER_BOUND;
		return b->stamp_ns;
	}
	now = bpf_ktime_get_ns();
	b->stamp_ns = now;
	b->unstamped = 0;
	*flags = 0;
	if (b->len == 0) {
		b->oldest_ts = now;
		/*
		 * Before the record is committed, so a flag that reads 0 means
		 * no record stamped before that read waits here, give or take
		 * the few instructions since `now`: far inside the daemon's
		 * drain holdback.
		 */
		set_pending(1);
	}
	return now;
}

static __always_inline void commit_batched(struct batch *b, __u32 size, __u64 now, __u32 family)
{
	b->len += size;
	b->records[family & (KLEAK_FAMILY_COUNT - 1)] += 1;
	/* `now` may be a free's lower bound: the age check then errs late, never early. */
	/* Flushed when the largest record would not fit. */
	if (b->len > BATCH_RECORD_BYTES - sizeof(struct kleak_cache_alloc_record) ||
	    now - b->oldest_ts > BATCH_MAX_AGE_NS)
		flush(b, true);
	barrier(); /* data[] is complete before busy clears */
	b->busy = 0;
	barrier();
	/*
	 * kleak__flush ran in an interrupt while we held the batch: it is our
	 * job now. It may also interrupt right here and find the batch free.
	 */
	if (b->flush_pending) {
		b->busy = 1;
		barrier();
		b->flush_pending = 0;
		flush(b, true);
		barrier();
		b->busy = 0;
	}
}

/* The unbatched path: one record reserved in this CPU's ring. */
static __always_inline void *reserve_direct(void **ring, __u64 size, __u32 family)
{
	void *rec;

	*ring = this_cpu_ring();
	if (!*ring) {
		count_drops(family, 1);
		return NULL;
	}
	rec = bpf_ringbuf_reserve(*ring, size, 0);
	if (!rec)
		count_drops(family, 1);
	return rec;
}

static __always_inline bool stack_wanted(unsigned long call_site, const void *ptr)
{
	__u32 key = 0, bit;
	struct kleak_stack_settings *s = bpf_map_lookup_elem(&stack_settings, &key);
	__u64 site = call_site;

	if (!s)
		return false;
	if (s->mode == KLEAK_STACKS_ALL) {
		__u32 shift = s->sample_shift;
		/* The bits below those sampled_out() read: every pointer that
		 * reaches here has those at 0, so reusing them would take a stack
		 * at every recorded allocation (`trace --sample-shift`). */
		__u64 h = ((__u64)ptr * 0x9E3779B97F4A7C15ULL) << (sample_shift & 63);

		return shift == 0 || (h >> (64 - (shift & 63))) == 0;
	}
	if (s->mode != KLEAK_STACKS_SUSPECTS)
		return false;
	bit = (site * 0x9E3779B97F4A7C15ULL) >> (64 - 12); /* log2(KLEAK_STACK_SITE_BITS) */
	if (!(s->site_bits[(bit >> 6) & (KLEAK_STACK_SITE_BITS / 64 - 1)] & (1ULL << (bit & 63))))
		return false;
	return bpf_map_lookup_elem(&stack_sites, &site) != NULL;
}

static __always_inline void count_stack(__u32 family, __u32 kind)
{
	__u32 slot = (family & (KLEAK_FAMILY_COUNT - 1)) * KLEAK_STACK_COUNT_KINDS + kind;
	__u64 *n = bpf_map_lookup_elem(&stack_counts, &slot);

	if (n)
		*n += 1;
}

/*
 * 1 + the allocation's stack id (0: none), and its process in *tgid. The
 * kernel's stack map hashes the frames: the same stack gets the same id, and
 * without BPF_F_REUSE_STACKID a bucket keeps its first stack, so an id a
 * record carries never comes to mean another stack.
 */
static __always_inline __u32 capture_stack(void *ctx, __u32 family, __u32 *tgid)
{
	long id = bpf_get_stackid(ctx, &stacks, 0);

	if (id < 0) {
		count_stack(family, id == -17 /* EEXIST */ ? KLEAK_STACKS_COLLIDED : KLEAK_STACKS_FAILED);
		return 0;
	}
	count_stack(family, KLEAK_STACKS_CAPTURED);
	*tgid = bpf_get_current_pid_tgid() >> 32;
	return (__u32)id + 1;
}

/*
 * cache: the kmem_cache of a KLEAK_CACHE_ALLOC_FROM record (written only for
 * that kind, whose record is 8 bytes longer).
 */
static __always_inline void fill_alloc(struct kleak_alloc_record *rec, __u64 now, __u16 kind, unsigned long call_site,
				       const void *ptr, __u64 bytes_req, __u64 bytes_alloc, __u32 gfp_flags,
				       __u64 cache, __u32 stack, __u32 tgid)
{
	fill_header(&rec->hdr, now, kind);
	rec->hdr.tgid = tgid;
	rec->ptr = (__u64)ptr;
	rec->call_site = call_site;
	/* No slab object reaches 4 GiB; clamp rather than wrap if one ever did. */
	rec->bytes_req = bytes_req > 0xffffffffULL ? 0xffffffffU : (__u32)bytes_req;
	rec->bytes_alloc = bytes_alloc > 0xffffffffULL ? 0xffffffffU : (__u32)bytes_alloc;
	rec->gfp_flags = gfp_flags;
	rec->stack = stack;
	if (kind == KLEAK_CACHE_ALLOC_FROM)
		((struct kleak_cache_alloc_record *)rec)->cache = cache;
}

/* cache: as for fill_alloc, written only for KLEAK_CACHE_FREE_FROM. */
static __always_inline void fill_free(struct kleak_free_record *rec, __u64 now, __u16 kind, unsigned long call_site,
				      const void *ptr, __u64 cache)
{
	fill_header(&rec->hdr, now, kind);
	rec->ptr = (__u64)ptr;
	rec->call_site = call_site;
	if (kind == KLEAK_CACHE_FREE_FROM)
		((struct kleak_cache_free_record *)rec)->cache = cache;
}

static __always_inline __u32 free_record_size(__u16 kind)
{
	return kind == KLEAK_CACHE_FREE_FROM ? sizeof(struct kleak_cache_free_record) : sizeof(struct kleak_free_record);
}

/*
 * Where an allocation's record goes: this CPU's batch, or (when another kleak
 * program owns the batch) the ring directly. reserve_alloc() also reads the
 * time the record carries; publish_alloc() commits the record or submits it.
 */
struct alloc_slot {
	struct batch *batch; /* NULL once the record is reserved in `ring` */
	void *ring;
	__u64 now;
	__u32 size;
	__u32 family;
};

static __always_inline void *reserve_alloc(struct alloc_slot *s, __u32 size, __u32 family)
{
	void *rec;
	__u16 flags;

	s->size = size;
	s->family = family;
	s->batch = this_cpu_batch();
	if (!s->batch)
		return NULL;
	rec = reserve_batched(s->batch, size);
	if (rec) {
		s->now = stamp(s->batch, false, &flags);
		return rec;
	}
	s->batch = NULL;
	rec = reserve_direct(&s->ring, size, family);
	s->now = bpf_ktime_get_ns();
	return rec;
}

static __always_inline void publish_alloc(struct alloc_slot *s, void *rec)
{
	if (s->batch)
		commit_batched(s->batch, s->size, s->now, s->family);
	else
		bpf_ringbuf_submit(rec, submit_flags(s->ring));
}

/*
 * Records who tgid is (KLEAK_PROCESS) before its allocation's record, when
 * the `processes` map does not hold it already as it is now: a new process,
 * an exec (new comm), a cgroup move, or an entry the LRU evicted. Only
 * allocations that carry a stack come here, and they already paid ~1 us for
 * the walk: a cgroup id read, a 16-byte copy and a hash lookup add little.
 * The leader's comm, not the thread's: threads that name themselves would
 * otherwise flip the entry at every allocation.
 */
static __always_inline void note_process(__u32 tgid, __u32 family)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct kleak_process_seen now = {};
	struct kleak_process_seen *was;
	struct kleak_process_record *rec;
	struct alloc_slot slot;

	now.cgroup_id = bpf_get_current_cgroup_id();
	bpf_probe_read_kernel(now.comm, sizeof(now.comm), BPF_CORE_READ(task, group_leader, comm));
	was = bpf_map_lookup_elem(&processes, &tgid);
	if (was && was->cgroup_id == now.cgroup_id && *(__u64 *)&was->comm[0] == *(__u64 *)&now.comm[0] &&
	    *(__u64 *)&was->comm[8] == *(__u64 *)&now.comm[8])
		return;
	bpf_map_update_elem(&processes, &tgid, &now, BPF_ANY);
	rec = reserve_alloc(&slot, sizeof(*rec), family);
	if (!rec)
		return;
	fill_header(&rec->hdr, slot.now, KLEAK_PROCESS);
	rec->hdr.tgid = tgid;
	rec->cgroup_id = now.cgroup_id;
	__builtin_memcpy(rec->comm, now.comm, sizeof(rec->comm));
	publish_alloc(&slot, rec);
}

/* ctx: the program's, for the stack walk. */
static __always_inline int emit_alloc(void *ctx, __u16 kind, unsigned long call_site, const void *ptr,
				      __u64 bytes_req, __u64 bytes_alloc, __u32 gfp_flags, __u64 cache)
{
	const __u32 size = kind == KLEAK_CACHE_ALLOC_FROM ? sizeof(struct kleak_cache_alloc_record)
							  : sizeof(struct kleak_alloc_record);
	struct kleak_alloc_record *rec;
	struct alloc_slot slot;
	__u32 stack = 0, tgid = 0;

	if (skip(ptr) || bytes_req < min_size)
		return 0;
	/* Before the batch is taken: the walk is the slow part. */
	if (stack_wanted(call_site, ptr)) {
		stack = capture_stack(ctx, kind_family(kind), &tgid);
		if (stack)
			note_process(tgid, kind_family(kind));
	}
	rec = reserve_alloc(&slot, size, kind_family(kind));
	if (!rec)
		return 0;
	fill_alloc(rec, slot.now, kind, call_site, ptr, bytes_req, bytes_alloc, gfp_flags, cache, stack, tgid);
	publish_alloc(&slot, rec);
	return 0;
}

static __always_inline int emit_free_direct(__u16 kind, unsigned long call_site, const void *ptr, __u64 now,
					    __u64 cache)
{
	struct kleak_free_record *rec;
	void *ring;

	rec = reserve_direct(&ring, free_record_size(kind), kind_family(kind));
	if (!rec)
		return 0;
	fill_free(rec, now, kind, call_site, ptr, cache);
	bpf_ringbuf_submit(rec, submit_flags(ring));
	return 0;
}

static __always_inline int emit_free(__u16 kind, unsigned long call_site, const void *ptr, __u64 cache)
{
	const __u32 size = free_record_size(kind);
	struct kleak_free_record *rec;
	struct batch *b;
	__u16 flags;
	__u64 now;

	if (skip(ptr))
		return 0;
	b = this_cpu_batch();
	if (!b)
		return 0;
	rec = reserve_batched(b, size);
	if (!rec)
		return emit_free_direct(kind, call_site, ptr, bpf_ktime_get_ns(), cache);
	now = stamp(b, true, &flags);
	fill_free(rec, now, kind, call_site, ptr, cache);
	rec->hdr.flags = flags;
	commit_batched(b, size, now, kind_family(kind));
	return 0;
}

/*
 * Every traced program is built twice from one body: as tp_btf and as raw_tp.
 * Older verifiers (6.1 and 6.12 among them; 6.18 accepts it) reject a tp_btf
 * program that reads a `void *` argument (kmalloc's ptr: "func 'kmalloc' arg1
 * type UNKNOWN is not a struct"); a raw_tp program reads every argument as a
 * plain u64 on any kernel. User space
 * loads one set (kernel/attach_mode.h says which and why); both run through
 * the same kernel path (bpf_trace_run), with the same per-program recursion
 * guard, so the choice costs nothing per event (README, "Kernels").
 */
#define KLEAK_TRACED(tracepoint, handler)                                  \
	SEC("tp_btf/" #tracepoint)                                             \
	int kleak__##handler(__u64 *ctx) { return on_##handler(ctx); }         \
	SEC("raw_tp/" #tracepoint)                                             \
	int kleak_raw__##handler(__u64 *ctx) { return on_##handler(ctx); }

/*
 * kmalloc(call_site, ptr, bytes_req, bytes_alloc, gfp_flags[, node]): the
 * first five arguments have kept their places across kernels, before and
 * after 6.1 split the kmem_alloc event class. Before 6.1 NUMA-node
 * allocations had their own event (kmalloc_node), same leading arguments.
 */
static __always_inline int on_kmalloc(__u64 *ctx)
{
	return emit_alloc(ctx, KLEAK_KMALLOC, ctx[0], (const void *)ctx[1], ctx[2], ctx[3], (__u32)ctx[4], 0);
}
KLEAK_TRACED(kmalloc, kmalloc)

static __always_inline int on_kmalloc_node(__u64 *ctx)
{
	return on_kmalloc(ctx);
}
KLEAK_TRACED(kmalloc_node, kmalloc_node)

/*
 * SLAB_RECLAIM_ACCOUNT: a #define (0x00020000) until the slab flags became
 * an enum of bit numbers (_SLAB_RECLAIM_ACCOUNT, 6.10). CO-RE says which.
 */
static __always_inline __u64 slab_reclaim_account(void)
{
	if (bpf_core_enum_value_exists(enum _slab_flag_bits, _SLAB_RECLAIM_ACCOUNT))
		return 1ULL << bpf_core_enum_value(enum _slab_flag_bits, _SLAB_RECLAIM_ACCOUNT);
	return 0x00020000ULL;
}

/*
 * kmem_cache_alloc changed shape in 6.1 (commit 2c1d697fb8ba, "mm/slab_common:
 * drop kmem_alloc & avoid dereferencing fields when not using"): before it was
 * (call_site, ptr, bytes_req, bytes_alloc, gfp_flags); since it is
 * (call_site, ptr, struct kmem_cache *s, gfp_flags, node) and the sizes come
 * from the cache. The same commit introduced trace_event_raw_kmem_cache_alloc,
 * so its presence in the kernel's BTF tells which shape this kernel has.
 */
static __always_inline int on_kmem_cache_alloc(__u64 *ctx)
{
	unsigned long call_site = ctx[0];
	const void *ptr = (const void *)ctx[1];

	if (skip(ptr)) /* before the cache is read */
		return 0;
	if (bpf_core_type_exists(struct trace_event_raw_kmem_cache_alloc)) {
		struct kmem_cache *s = (struct kmem_cache *)ctx[2];
		__u32 gfp = (__u32)ctx[3];

		if (BPF_CORE_READ(s, flags) & slab_reclaim_account())
			gfp |= KLEAK_GFP_RECLAIMABLE;
		return emit_alloc(ctx, KLEAK_CACHE_ALLOC_FROM, call_site, ptr, BPF_CORE_READ(s, object_size),
				  BPF_CORE_READ(s, size), gfp, (__u64)s);
	}
	return emit_alloc(ctx, KLEAK_CACHE_ALLOC, call_site, ptr, ctx[2], ctx[3], (__u32)ctx[4], 0);
}
KLEAK_TRACED(kmem_cache_alloc, kmem_cache_alloc)

static __always_inline int on_kmem_cache_alloc_node(__u64 *ctx)
{
	return emit_alloc(ctx, KLEAK_CACHE_ALLOC, ctx[0], (const void *)ctx[1], ctx[2], ctx[3], (__u32)ctx[4], 0);
}
KLEAK_TRACED(kmem_cache_alloc_node, kmem_cache_alloc_node)

/* kfree(call_site, ptr): unchanged since the event exists. */
static __always_inline int on_kfree(__u64 *ctx)
{
	return emit_free(KLEAK_KFREE, ctx[0], (const void *)ctx[1], 0);
}
KLEAK_TRACED(kfree, kfree)

/*
 * The kernel does not run a tp_btf program that is already running on the
 * CPU: it counts a "recursion miss" and the event is lost. RCU callbacks in
 * softirq free slab objects (files, dentries, inodes) while
 * kleak__kmem_cache_free runs in task context on the same CPU, so nested
 * kmem_cache_free events are common, and each lost free would show as a
 * false leak. So a second program on the same tracepoint, attached after
 * the first and so run right after it for each event, records every event
 * the first one did not run for.
 *
 * How it knows: the first program pushes the pointer it handled onto a small
 * per-CPU stack (freed[]) as its last act; the second looks for its event's
 * pointer there and pops it (and anything above it) when found. Found: the
 * first program ran for this event. Not found: it was skipped, so the second
 * records the event. An event that interrupts the first program after its
 * push and before it returns is skipped too, and finds the interrupted
 * event's pointer, not its own, on top: still recorded. Interrupts between
 * the two programs run both for their own event, push and pop, and leave the
 * stack as they found it. Entries pushed while the second program runs for
 * an outer event (its own second run is skipped then) are popped with the
 * outer event's. Lost: an event nested two deep inside both programs, and a
 * skipped event whose pointer equals such a leftover entry (the same object
 * freed, reallocated and freed again within the nesting). On kernels without
 * the per-program recursion guard (the first program then nests in itself
 * and pushes too) an event interrupted inside remember_freed() can be
 * recorded twice.
 * User space reports recursion misses minus `recovered` as lost.
 */
static __always_inline void remember_freed(struct batch *b, const void *ptr)
{
	__u8 d = b->freed_depth;

	if (d >= FREED_STACK) { /* only leftovers can fill it: drop the oldest */
		b->freed[0] = b->freed[1];
		b->freed[1] = b->freed[2];
		b->freed[2] = b->freed[3];
		d = FREED_STACK - 1;
	}
	/*
	 * Write the slot, then publish it: an interrupt here cannot push (the
	 * kernel skips this program while it runs), it can only look, and must
	 * not see a half-made entry.
	 */
	b->freed[d & (FREED_STACK - 1)] = (__u64)ptr;
	barrier();
	b->freed_depth = d + 1;
}

/* Pops `ptr` and what was pushed above it; false when it is not there. */
static __always_inline bool forget_freed(struct batch *b, const void *ptr)
{
	__u8 d = b->freed_depth;

	if (d > FREED_STACK)
		d = FREED_STACK;
#pragma unroll
	for (int i = FREED_STACK; i > 0; i--) {
		if (i <= d && b->freed[i - 1] == (__u64)ptr) {
			/* No pointer is ~0: a popped slot can never match again. */
			b->freed[i - 1] = ~0ULL;
			b->freed_depth = i - 1;
			return true;
		}
	}
	return false;
}

/*
 * kmem_cache_free(call_site, ptr, x): x was the cache's name until the 6.1
 * commit that reshaped kmem_cache_alloc (see above), the cache since: its
 * address is copied into the record, the cache itself never read.
 */
static __always_inline __u16 cache_free_kind(__u64 *ctx, __u64 *cache)
{
	if (bpf_core_type_exists(struct trace_event_raw_kmem_cache_alloc)) {
		*cache = ctx[2];
		return KLEAK_CACHE_FREE_FROM;
	}
	*cache = 0;
	return KLEAK_CACHE_FREE;
}

static __always_inline int on_kmem_cache_free(__u64 *ctx)
{
	const void *ptr = (const void *)ctx[1];
	struct batch *b = this_cpu_batch();
	__u64 cache;
	__u16 kind;

	if (!b)
		return 0;
	kind = cache_free_kind(ctx, &cache);
	emit_free(kind, ctx[0], ptr, cache);
	barrier();
	remember_freed(b, ptr);
	return 0;
}
KLEAK_TRACED(kmem_cache_free, kmem_cache_free)

static __always_inline int on_kmem_cache_free_nested(__u64 *ctx)
{
	const void *ptr = (const void *)ctx[1];
	struct batch *b = this_cpu_batch();
	__u32 key = 0;
	__u64 *n, cache;
	__u16 kind;

	if (!b || forget_freed(b, ptr))
		return 0;
	/* Counted even when skipped on purpose: the primary would have skipped it too. */
	n = bpf_map_lookup_elem(&recovered, &key);
	if (n)
		*n += 1;
	kind = cache_free_kind(ctx, &cache);
	if (!skip(ptr))
		emit_free_direct(kind, ctx[0], ptr, bpf_ktime_get_ns(), cache);
	return 0;
}
KLEAK_TRACED(kmem_cache_free, kmem_cache_free_nested)

/*
 * percpu:percpu_alloc_percpu(call_site, reserved, is_atomic, size, align,
 * base_addr, off, ptr, bytes_alloc, gfp_flags): call_site, bytes_alloc and
 * gfp_flags since 5.19 (commit f67bed134a05, "percpu: improve percpu_alloc_percpu
 * event trace"); user space checks the arity in BTF. bytes_alloc is what the
 * allocation costs over every CPU's unit: a percpu counter costs its size
 * times the CPUs.
 */
static __always_inline int on_percpu_alloc(__u64 *ctx)
{
	return emit_alloc(ctx, KLEAK_PERCPU_ALLOC, ctx[0], (const void *)ctx[7], ctx[3], ctx[8], (__u32)ctx[9], 0);
}
KLEAK_TRACED(percpu_alloc_percpu, percpu_alloc)

/* percpu:percpu_free_percpu(base_addr, off, ptr): no call site. */
static __always_inline int on_percpu_free(__u64 *ctx)
{
	return emit_free(KLEAK_PERCPU_FREE, 0, (const void *)ctx[2], 0);
}
KLEAK_TRACED(percpu_free_percpu, percpu_free)

/*
 * The call site of an allocation whose tracepoint has none: a short stack
 * (KLEAK_SITE_FRAMES, so the unwinder stops early) and the first frame past
 * the allocator's own (kleak_site.h). *owner: whose code that frame is.
 */
static __always_inline __u64 stack_site(void *ctx, __u64 *frames, __u32 allocator, __u32 *owner)
{
	long bytes;

	/* kleak_pick_site reads every slot: those past the stack's end must be 0. */
	__builtin_memset(frames, 0, KLEAK_SITE_FRAMES * sizeof(__u64));
	bytes = bpf_get_stack(ctx, frames, KLEAK_SITE_FRAMES * sizeof(__u64), 0);
	*owner = KLEAK_ROLE_NONE;
	if (bytes <= 0)
		return 0;
	return kleak_pick_site(frames, text_ranges, allocator, owner);
}

static __always_inline struct site_scratch *this_cpu_site_scratch(void)
{
	__u32 key = 0;

	return bpf_map_lookup_elem(&site_scratch, &key);
}

/*
 * vmalloc:alloc_vmap_area(addr, size, align, vstart, vend, failed): every
 * vmap area (vmalloc, vmap, ioremap, module and BPF text, vmap'd stacks). The
 * size includes the guard page. No call site: the stack gives it.
 */
static __always_inline int on_vmalloc_alloc(__u64 *ctx)
{
	const void *addr = (const void *)ctx[0];
	struct site_scratch *scratch;
	__u64 site = 0;
	__u32 owner;

	if ((int)ctx[5] || skip(addr))
		return 0;
	scratch = this_cpu_site_scratch();
	if (scratch)
		site = stack_site(ctx, scratch->vmalloc, KLEAK_ROLE_VMALLOC, &owner);
	return emit_alloc(ctx, KLEAK_VMALLOC_ALLOC, site, addr, ctx[1], ctx[1], 0, 0);
}
KLEAK_TRACED(alloc_vmap_area, vmalloc_alloc)

/* vmalloc:free_vmap_area_noflush(va_start, nr_lazy, nr_lazy_max): the area is
 * gone from the busy tree (its pages may be purged later, lazily). */
static __always_inline int on_vmalloc_free(__u64 *ctx)
{
	return emit_free(KLEAK_VMALLOC_FREE, 0, (const void *)ctx[0], 0);
}
KLEAK_TRACED(free_vmap_area_noflush, vmalloc_free)

static __always_inline void count_pages(__u32 slot, __u64 pages)
{
	__u32 key = 0;
	struct page_counts *c = bpf_map_lookup_elem(&page_counts, &key);

	if (c)
		c->n[slot & (KLEAK_PAGE_COUNTS - 1)] += pages; /* per-CPU, no atomics */
}

static __always_inline void fill_page_alloc(struct kleak_page_alloc_record *rec, __u64 now, __u64 site,
					    const void *page, __u32 order, __u32 gfp, int migratetype)
{
	fill_header(&rec->hdr, now, KLEAK_PAGE_ALLOC);
	rec->page = (__u64)page;
	rec->call_site = site;
	rec->gfp_flags = gfp;
	rec->order = order;
	rec->page_shift = page_shift;
	rec->migratetype = migratetype;
	rec->pad = 0;
}

/*
 * kmem:mm_page_alloc(page, order, gfp_flags, migratetype). Movable pages
 * (anonymous memory, page cache, tmpfs) are only counted unless
 * track_movable_pages: that test comes first and costs nothing more. The
 * others pay a short stack read for their site; pages a slab, vmalloc or
 * percpu allocation takes for itself are only counted too, their memory
 * already accounted to that family.
 */
static __always_inline int on_page_alloc(__u64 *ctx)
{
	const void *page = (const void *)ctx[0];
	const __u32 size = sizeof(struct kleak_page_alloc_record);
	__u32 order = (__u32)ctx[1] & 31, gfp = (__u32)ctx[2], owner;
	int migratetype = (int)ctx[3];
	struct kleak_page_alloc_record *rec;
	struct site_scratch *scratch;
	struct alloc_slot slot;
	__u64 site = 0;

	if (skip(page))
		return 0;
	if (!track_movable_pages && migratetype == bpf_core_enum_value(enum migratetype, MIGRATE_MOVABLE)) {
		count_pages(KLEAK_PAGES_MOVABLE, 1ULL << order);
		return 0;
	}
	scratch = this_cpu_site_scratch();
	if (scratch)
		site = stack_site(ctx, scratch->page, KLEAK_ROLE_PAGE_ALLOC, &owner);
	else
		owner = KLEAK_ROLE_NONE;
	if (owner != KLEAK_ROLE_NONE) {
		count_pages(owner == KLEAK_ROLE_SLAB	  ? KLEAK_PAGES_SLAB
			    : owner == KLEAK_ROLE_VMALLOC ? KLEAK_PAGES_VMALLOC
			    : owner == KLEAK_ROLE_PERCPU  ? KLEAK_PAGES_PERCPU
							  : KLEAK_PAGES_NO_SITE,
			    1ULL << order);
		return 0;
	}
	count_pages(site ? KLEAK_PAGES_TRACKED : KLEAK_PAGES_NO_SITE, 1ULL << order);
	rec = reserve_alloc(&slot, size, KLEAK_FAMILY_PAGE);
	if (!rec)
		return 0;
	fill_page_alloc(rec, slot.now, site, page, order, gfp, migratetype);
	publish_alloc(&slot, rec);
	return 0;
}
KLEAK_TRACED(mm_page_alloc, page_alloc)

/*
 * kmem:mm_page_free(page, order), from free_pages_prepare(): every page
 * freed, those freed in batches too (mm_page_free_batched fires for them as
 * well, after this one: kleakd does not trace it, or it would free them
 * twice). Frees carry no migratetype, so untracked pages' frees are recorded
 * too: user space counts them as unmatched page frees.
 */
static __always_inline int on_page_free(__u64 *ctx)
{
	if (!emit_records)
		return 0;
	count_pages(KLEAK_PAGES_FREED, 1ULL << ((__u32)ctx[1] & 31));
	return emit_free(KLEAK_PAGE_FREE, 0, (const void *)ctx[0], 0);
}
KLEAK_TRACED(mm_page_free, page_free)

/*
 * Empties this CPU's freed[] stack. Run by user space on each CPU once both
 * kmem_cache_free programs are attached: until then the first one pushed
 * entries that nothing popped, and leftovers take room from real nesting.
 */
SEC("raw_tp")
int kleak__reset_freed(void *ctx)
{
	struct batch *b = this_cpu_batch();

	if (b)
		b->freed_depth = 0;
	return 0;
}

/* Filled by kleak__cache_info (kleak_abi.h). */
struct kleak_cache_info cache_info;

/*
 * Names one slab cache: its one argument is a `struct kmem_cache *` from a
 * KLEAK_CACHE_ALLOC_FROM record. Not attached: user space runs it
 * (BPF_PROG_TEST_RUN) once per cache it meets, so events never pay for names.
 * A pointer to a cache destroyed since reads whatever is there now, or
 * nothing (found stays 0): probe reads fault safely.
 */
SEC("raw_tp")
int kleak__cache_info(__u64 *ctx)
{
	struct kmem_cache *s = (struct kmem_cache *)ctx[0];
	const char *name = BPF_CORE_READ(s, name);

	cache_info.found = 0;
	if (!name || bpf_probe_read_kernel_str(cache_info.name, sizeof(cache_info.name), name) <= 0)
		return 0;
	cache_info.object_size = BPF_CORE_READ(s, object_size);
	cache_info.size = BPF_CORE_READ(s, size);
	cache_info.reclaimable = (BPF_CORE_READ(s, flags) & slab_reclaim_account()) != 0;
	cache_info.found = 1;
	return 0;
}

/*
 * Pushes this CPU's batch into its ring, as its owner. Returns 1 when this
 * interrupted a kleak program holding the batch: that program flushes when
 * it lets go (flush_pending). Returns 0 once the batch is in the ring.
 */
static __always_inline int flush_this_cpu(bool may_wake)
{
	struct batch *b = this_cpu_batch();

	if (!b)
		return 0;
	if (b->busy) {
		b->flush_pending = 1;
		return 1;
	}
	b->busy = 1;
	barrier();
	flush(b, may_wake);
	barrier();
	b->busy = 0;
	return 0;
}

/*
 * Pushes this CPU's batch into its ring. Not attached: user space runs it
 * (BPF_PROG_TEST_RUN with BPF_F_TEST_RUN_ON_CPU) before every drain on each
 * CPU whose `pending` flag is set, and on every CPU at start-up and after
 * detach, so a CPU that went idle does not keep its last records. On another
 * CPU it runs in an IPI: if it interrupted a kleak program holding the batch,
 * that program flushes when it lets go, and this returns 1 so that user space
 * waits for it. Returns 0 once the batch is in the ring.
 */
SEC("raw_tp")
int kleak__flush(void *ctx)
{
	return flush_this_cpu(true);
}

/*
 * The flush of a CPU that goes offline. kleak__flush cannot reach it there
 * (BPF_PROG_TEST_RUN on an offline CPU fails with ENXIO): without this, its
 * last records would wait in its batch until it comes back, maybe never, and
 * its `pending` flag would stay set, every drain trying it again.
 *
 * cpuhp:cpuhp_enter fires before each hotplug step's callback (kernel/cpu.c,
 * cpuhp_invoke_callback) with `target`, the state the CPU is headed for, and
 * `idx`, the step about to run. Going down, steps run from the CPU's state
 * down to target + 1, so target < idx; coming up, idx <= target
 * (cpuhp_set_state: bringup is state < target). `cpu` is the CPU changing
 * state, but only some steps run on it: those above CPUHP_TEARDOWN_CPU in its
 * hotplug thread, the DYING ones in stop_machine's take_cpu_down, interrupts
 * off. The others run on the CPU in control, where this has nothing to do.
 * So the dying CPU is flushed at each of its own steps, the last one
 * (sched_cpu_dying, CPUHP_AP_SCHED_STARTING) after it stopped taking
 * interrupts and other tasks: what it records later (the stopper thread and
 * the idle task on their way out, if anything) waits for it to come back.
 *
 * No wake-up: that is an irq_work queued on this CPU, and past
 * smpcfd_dying_cpu nothing runs it before the CPU comes back. The daemon
 * drains on its timer anyway.
 *
 * Hotplug is rare, but the test on the CPU comes first all the same. An
 * internal program: not listed among the traced tracepoints (bpf_tracer.cpp).
 */
static __always_inline int on_cpu_down(__u64 *ctx)
{
	unsigned int cpu = ctx[0];
	int target = ctx[1], idx = ctx[2];

	if (cpu != bpf_get_smp_processor_id() || target >= idx)
		return 0;
	/* In task context or with interrupts off: never inside a kleak program. */
	flush_this_cpu(false);
	return 0;
}
KLEAK_TRACED(cpuhp_enter, cpu_down)

/*
 * printk:console(text, len) fires where the message is stored (in the
 * printk caller's context), with the text after its "<N>" level prefix has
 * been parsed away. The record is built in a per-CPU scratch slot, because a
 * ring reservation needs a constant size, and copied into the ring with only
 * the bytes the message needs.
 */
static __always_inline int on_printk(__u64 *ctx)
{
	const char *text = (const char *)ctx[0];
	__u64 len = ctx[1];
	struct kleak_printk_record *rec;
	__u32 key = 0, n;
	__u64 id;
	void *ring;

	if (!emit_records)
		return 0;
	rec = bpf_map_lookup_elem(&printk_scratch, &key);
	if (!rec)
		return 0;
	ring = this_cpu_ring();
	if (!ring) {
		count_drops(KLEAK_DROPS_PRINTK, 1);
		return 0;
	}
	n = len > KLEAK_PRINTK_MAX ? KLEAK_PRINTK_MAX : len;
	id = bpf_get_current_pid_tgid();
	rec->hdr.ts_ns = bpf_ktime_get_ns();
	rec->hdr.kind = KLEAK_PRINTK;
	rec->hdr.flags = len > KLEAK_PRINTK_MAX ? KLEAK_PRINTK_TRUNCATED : 0;
	rec->hdr.tgid = id >> 32;
	rec->len = n;
	rec->tid = (__u32)id;
	if (bpf_probe_read_kernel(rec->text, n, text))
		return 0;
	if (bpf_ringbuf_output(ring, rec, KLEAK_PRINTK_HEADER_SIZE + n, submit_flags(ring)))
		count_drops(KLEAK_DROPS_PRINTK, 1);
	return 0;
}
KLEAK_TRACED(console, printk)
