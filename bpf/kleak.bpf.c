// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * kleak.bpf.c - slab allocation tracing for kleakd.
 *
 * One program per kmem tracepoint, attached as BTF raw tracepoints (tp_btf):
 * cheaper than classic tracepoints, and the kernel only skips a program when
 * that same program nests on the CPU, not whenever any BPF program runs
 * there (the bcc memleak "lost frees in IRQ" bug, iovisor/bcc#2997).
 *
 * Each program writes a fixed-size record (bpf/kleak_abi.h) into its own
 * CPU's ring buffer. The rings are created by user space and installed in the
 * `rings` array-of-maps before the programs are attached.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "kleak_abi.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/*
 * Backlog (bytes not yet consumed) above which a record wakes the consumer.
 * Below it records are submitted with BPF_RB_NO_WAKEUP and the daemon drains
 * on a timer: a wake-up per record would cost more than the record itself.
 * Set through rodata before load; 0 means "always wake up".
 */
const volatile __u64 wakeup_backlog_bytes = 0;

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

/* Records lost because the CPU's ring was full (or not installed). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

/* ZERO_OR_NULL_PTR(): NULL (failed allocation, kfree(NULL)) and ZERO_SIZE_PTR. */
static __always_inline bool zero_or_null(const void *ptr)
{
	return (unsigned long)ptr <= 16;
}

static __always_inline void count_drop(void)
{
	__u32 key = KLEAK_DROPS_KEY;
	__u64 *n = bpf_map_lookup_elem(&drops, &key);

	if (n)
		*n += 1; /* per-CPU slot, no atomics needed */
}

static __always_inline void *reserve(void **ring, __u64 size)
{
	__u32 cpu = bpf_get_smp_processor_id();
	void *rec;

	*ring = bpf_map_lookup_elem(&rings, &cpu);
	if (!*ring) {
		count_drop();
		return NULL;
	}
	rec = bpf_ringbuf_reserve(*ring, size, 0);
	if (!rec)
		count_drop();
	return rec;
}

static __always_inline __u64 submit_flags(void *ring)
{
	if (bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) >= wakeup_backlog_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

static __always_inline int emit_alloc(__u16 kind, unsigned long call_site, const void *ptr, __u64 bytes_req,
				      __u64 bytes_alloc, __u32 gfp_flags)
{
	struct kleak_alloc_record *rec;
	void *ring;
	__u64 id;

	if (zero_or_null(ptr))
		return 0;
	rec = reserve(&ring, sizeof(*rec));
	if (!rec)
		return 0;
	id = bpf_get_current_pid_tgid();
	rec->hdr.ts_ns = bpf_ktime_get_ns();
	rec->hdr.kind = kind;
	rec->hdr.flags = 0;
	rec->hdr.tgid = id >> 32;
	rec->ptr = (__u64)ptr;
	rec->call_site = call_site;
	/* No slab object reaches 4 GiB; clamp rather than wrap if one ever did. */
	rec->bytes_req = bytes_req > 0xffffffffULL ? 0xffffffffU : (__u32)bytes_req;
	rec->bytes_alloc = bytes_alloc > 0xffffffffULL ? 0xffffffffU : (__u32)bytes_alloc;
	rec->gfp_flags = gfp_flags;
	rec->tid = (__u32)id;
	bpf_ringbuf_submit(rec, submit_flags(ring));
	return 0;
}

static __always_inline int emit_free(__u16 kind, unsigned long call_site, const void *ptr)
{
	struct kleak_free_record *rec;
	void *ring;

	if (zero_or_null(ptr))
		return 0;
	rec = reserve(&ring, sizeof(*rec));
	if (!rec)
		return 0;
	rec->hdr.ts_ns = bpf_ktime_get_ns();
	rec->hdr.kind = kind;
	rec->hdr.flags = 0;
	rec->hdr.tgid = bpf_get_current_pid_tgid() >> 32;
	rec->ptr = (__u64)ptr;
	rec->call_site = call_site;
	bpf_ringbuf_submit(rec, submit_flags(ring));
	return 0;
}

/*
 * kmalloc(call_site, ptr, bytes_req, bytes_alloc, gfp_flags[, node]): the
 * first five arguments have kept their places across kernels, before and
 * after 6.1 split the kmem_alloc event class.
 */
SEC("tp_btf/kmalloc")
int BPF_PROG(kleak__kmalloc, unsigned long call_site, const void *ptr, size_t bytes_req, size_t bytes_alloc,
	     gfp_t gfp_flags)
{
	return emit_alloc(KLEAK_KMALLOC, call_site, ptr, bytes_req, bytes_alloc, gfp_flags);
}

/* Before 6.1 NUMA-node allocations had their own events, same leading arguments. */
SEC("tp_btf/kmalloc_node")
int BPF_PROG(kleak__kmalloc_node, unsigned long call_site, const void *ptr, size_t bytes_req, size_t bytes_alloc,
	     gfp_t gfp_flags)
{
	return emit_alloc(KLEAK_KMALLOC, call_site, ptr, bytes_req, bytes_alloc, gfp_flags);
}

/*
 * kmem_cache_alloc changed shape in 6.1 (commit 2c1d697fb8ba, "mm/slab_common:
 * drop kmem_alloc & avoid dereferencing fields when not using"): before it was
 * (call_site, ptr, bytes_req, bytes_alloc, gfp_flags); since it is
 * (call_site, ptr, struct kmem_cache *s, gfp_flags, node) and the sizes come
 * from the cache. The same commit introduced trace_event_raw_kmem_cache_alloc,
 * so its presence in the kernel's BTF tells which shape this kernel has.
 */
SEC("tp_btf/kmem_cache_alloc")
int kleak__kmem_cache_alloc(__u64 *ctx)
{
	unsigned long call_site = ctx[0];
	const void *ptr = (const void *)ctx[1];

	if (bpf_core_type_exists(struct trace_event_raw_kmem_cache_alloc)) {
		struct kmem_cache *s = (struct kmem_cache *)ctx[2];

		return emit_alloc(KLEAK_CACHE_ALLOC, call_site, ptr, BPF_CORE_READ(s, object_size),
				  BPF_CORE_READ(s, size), (__u32)ctx[3]);
	}
	return emit_alloc(KLEAK_CACHE_ALLOC, call_site, ptr, ctx[2], ctx[3], (__u32)ctx[4]);
}

SEC("tp_btf/kmem_cache_alloc_node")
int kleak__kmem_cache_alloc_node(__u64 *ctx)
{
	return emit_alloc(KLEAK_CACHE_ALLOC, ctx[0], (const void *)ctx[1], ctx[2], ctx[3], (__u32)ctx[4]);
}

/* kfree(call_site, ptr): unchanged since the event exists. */
SEC("tp_btf/kfree")
int BPF_PROG(kleak__kfree, unsigned long call_site, const void *ptr)
{
	return emit_free(KLEAK_KFREE, call_site, ptr);
}

/* kmem_cache_free(call_site, ptr, ...): the third argument changed (name, then cache); unused here. */
SEC("tp_btf/kmem_cache_free")
int BPF_PROG(kleak__kmem_cache_free, unsigned long call_site, const void *ptr)
{
	return emit_free(KLEAK_CACHE_FREE, call_site, ptr);
}
