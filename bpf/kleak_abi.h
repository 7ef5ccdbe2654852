/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * kleak_abi.h - the one record layout shared by the BPF programs and the
 * C++ daemon.  Everything crossing the ring buffers is defined here.
 *
 * Rules: fixed-width types only, explicit padding, every struct a multiple of
 * 8 bytes, no pointers.  Any change to a layout bumps KLEAK_ABI_VERSION; the
 * daemon static_asserts the sizes and offsets, and recordings carry the
 * version so a report refuses data it cannot read.
 */
#ifndef KLEAK_ABI_H
#define KLEAK_ABI_H

#ifdef __BPF__
/* vmlinux.h already provides __u8.. __u64 */
#else
#include <linux/types.h>
#endif

#define KLEAK_ABI_VERSION 6
/* Version 2 added KLEAK_TS_LOWER_BOUND and KLEAK_TIME_MARK, version 3
 * KLEAK_CACHE_ALLOC_FROM, version 4 the page, percpu and vmalloc kinds (and
 * struct kleak_page_alloc_record) and KLEAK_CACHE_FREE_FROM, version 5 the
 * stack id and tgid of allocation records (the old `tid` slot, which older
 * writers left 0: "no stack"), version 6 KLEAK_PROCESS; an older stream
 * is a newer one that uses none of them, so all are readable. A new kind a
 * reader would count undecodable bumps the version, so that an older reader
 * refuses the recording rather than losing every such record. */
#define KLEAK_ABI_OLDEST_READABLE 1

/* What a record describes.  Values are part of the ABI. */
enum kleak_record_kind {
	KLEAK_KMALLOC = 1,          /* kmem:kmalloc */
	KLEAK_KFREE = 2,            /* kmem:kfree */
	KLEAK_CACHE_ALLOC = 3,      /* kmem:kmem_cache_alloc */
	KLEAK_CACHE_FREE = 4,       /* kmem:kmem_cache_free */
	KLEAK_PRINTK = 5,           /* printk:console (variable length) */
	KLEAK_TIME_MARK = 6,        /* a clock reading closing a batch (header only) */
	KLEAK_CACHE_ALLOC_FROM = 7, /* kmem:kmem_cache_alloc with its cache (6.1+) */
	KLEAK_PAGE_ALLOC = 8,       /* kmem:mm_page_alloc (struct kleak_page_alloc_record) */
	KLEAK_PAGE_FREE = 9,        /* kmem:mm_page_free (free record, call_site 0) */
	KLEAK_PERCPU_ALLOC = 10,    /* percpu:percpu_alloc_percpu (alloc record) */
	KLEAK_PERCPU_FREE = 11,     /* percpu:percpu_free_percpu (free record, call_site 0) */
	KLEAK_VMALLOC_ALLOC = 12,   /* vmalloc:alloc_vmap_area (alloc record) */
	KLEAK_VMALLOC_FREE = 13,    /* vmalloc:free_vmap_area_noflush (free record, call_site 0) */
	KLEAK_CACHE_FREE_FROM = 14, /* kmem:kmem_cache_free with its cache (6.1+) */
	KLEAK_PROCESS = 15,         /* who a process is (struct kleak_process_record) */
};

/*
 * Allocator families. Each has its own pointer space (a page is keyed by its
 * struct page address, a percpu allocation by its __percpu pointer, a vmalloc
 * area by its start): the daemon keeps them apart (core/family.h). Also the
 * keys of the per-CPU `drops` array, which has one more slot, for printk.
 */
enum kleak_family {
	KLEAK_FAMILY_SLAB = 0,
	KLEAK_FAMILY_PAGE = 1,
	KLEAK_FAMILY_PERCPU = 2,
	KLEAK_FAMILY_VMALLOC = 3,
};
#define KLEAK_FAMILY_COUNT 4
#define KLEAK_DROPS_PRINTK 4 /* drops slot of printk records */
#define KLEAK_DROPS_SLOTS 5
/* A new kind or layout bumps the ABI version (above). */

/* First 16 bytes of every record. */
struct kleak_record_header {
	__u64 ts_ns;  /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u16 kind;   /* enum kleak_record_kind */
	__u16 flags;  /* KLEAK_TS_* and KLEAK_PRINTK_* bits */
	__u32 tgid;   /* process (thread group) id in printk records, and in
		       * allocation records that carry a stack; 0 otherwise */
};

/*
 * In a free record: ts_ns is not this record's own clock reading but the
 * latest one its CPU took on the batched path before it (reading the clock
 * costs more than the rest of the program). The free happened after ts_ns and
 * before the next record of the same batch that carries no such flag (an
 * allocation, a free that read the clock, or the batch's closing time mark).
 * Every batch that holds a flagged free ends with a record that does not.
 */
#define KLEAK_TS_LOWER_BOUND 0x2

/*
 * Most consecutive flagged frees in a batch: the next one reads the clock, so
 * a run of frees (an RCU callback batch) keeps windows short.
 */
#define KLEAK_FREES_PER_STAMP 8

/* KLEAK_TIME_MARK: 16 bytes, a header whose ts_ns is a fresh clock reading. */
struct kleak_time_mark {
	struct kleak_record_header hdr;
};

/* kfree / kmem_cache_free: 32 bytes. */
struct kleak_free_record {
	struct kleak_record_header hdr;
	__u64 ptr;
	__u64 call_site;
};

/*
 * __GFP_RECLAIMABLE (bit 4 since 2.6.24). In a kmem_cache_alloc record's
 * gfp_flags it also marks a reclaimable cache (SLAB_RECLAIM_ACCOUNT: dentries,
 * inodes, buffer heads), as the slab allocator adds it to that cache's own
 * page allocations. Records of kernels before 6.1, and of kleakd before this
 * flag, carry the caller's flags alone.
 */
#define KLEAK_GFP_RECLAIMABLE 0x10

/* kmalloc / kmem_cache_alloc: 48 bytes. Slack = bytes_alloc - bytes_req. */
struct kleak_alloc_record {
	struct kleak_record_header hdr;
	__u64 ptr;
	__u64 call_site;
	__u32 bytes_req;
	__u32 bytes_alloc;
	__u32 gfp_flags;  /* the caller's; see KLEAK_GFP_RECLAIMABLE */
	__u32 stack;  /* 1 + the stack id in the `stacks` map; 0: none captured */
};

/*
 * kmem_cache_alloc on kernels whose event carries the cache (6.1+): 56 bytes,
 * an allocation record and the `struct kmem_cache *`, which user space names
 * once per cache (struct kleak_cache_info), not per event.
 */
struct kleak_cache_alloc_record {
	struct kleak_alloc_record alloc;
	__u64 cache;
};

/*
 * kmem_cache_free on kernels whose event carries the cache (6.1+): 40 bytes.
 * A free of an object kleakd never saw allocated (made before tracing
 * started) tells which cache still holds such objects: a site filling that
 * cache from empty is replacing them, not leaking (verdict.h).
 */
struct kleak_cache_free_record {
	struct kleak_free_record free;
	__u64 cache;
};

/*
 * What kleak__cache_info reads of one `struct kmem_cache` into the object's
 * .bss: user space runs it (BPF_PROG_TEST_RUN, the pointer as its argument)
 * when a record names a cache it has not named yet. Not in any ring, so a
 * change to it does not bump KLEAK_ABI_VERSION.
 */
#define KLEAK_CACHE_NAME_MAX 64
struct kleak_cache_info {
	char name[KLEAK_CACHE_NAME_MAX]; /* NUL-terminated, cut to fit */
	__u32 object_size;
	__u32 size;                      /* per object, with metadata */
	__u32 reclaimable;               /* SLAB_RECLAIM_ACCOUNT */
	__u32 found;                     /* 1: the fields above were read */
};

/* Most bytes of one printk message kept; longer ones are cut and flagged. */
#define KLEAK_PRINTK_MAX 1024
#define KLEAK_PRINTK_TRUNCATED 0x1 /* in hdr.flags */

/*
 * printk:console: 24 bytes + the text (not NUL-terminated). Only `len` text
 * bytes are written to the ring, so a record costs what its message needs.
 */
struct kleak_printk_record {
	struct kleak_record_header hdr;
	__u32 len;   /* text bytes that follow */
	__u32 tid;
	char text[KLEAK_PRINTK_MAX];
};
#define KLEAK_PRINTK_HEADER_SIZE 24

/*
 * A ring sample holds one record, or a batch: several whole allocation and
 * free records back to back (each a multiple of 8 bytes), at most this many
 * bytes, the last KLEAK_TIME_MARK_BYTES of them kept for the closing time
 * mark. A record's size follows from its kind. printk records are never
 * batched: a sample holding one is exactly 24 + len bytes.
 */
#define KLEAK_BATCH_BYTES 4096
#define KLEAK_TIME_MARK_BYTES 16

/*
 * The ring of a CPU offline when the daemon started, until the CPU comes
 * online and the daemon gives it a full one: a few batches' room. Such a
 * ring wakes its consumer at every batch (full_ring_bytes in kleak.bpf.c),
 * as the full rings' mark would never be reached in it.
 */
#define KLEAK_SMALL_RING_BYTES 16384

/* Index of the slab family's slot of the per-CPU `drops` array. */
#define KLEAK_DROPS_KEY KLEAK_FAMILY_SLAB

/*
 * kmem:mm_page_alloc of a page kleakd tracks: 40 bytes. `page` is the struct
 * page address (one per pfn in the vmemmap, so as good a key as the pfn and
 * free to read); the size is (1 << page_shift) << order bytes. call_site is
 * the first frame outside the page allocator (kleak_site.h), 0 if none was
 * found.
 */
struct kleak_page_alloc_record {
	struct kleak_record_header hdr;
	__u64 page;
	__u64 call_site;
	__u32 gfp_flags;
	__u8 order;
	__u8 page_shift;  /* log2 of the page size */
	__u8 migratetype; /* the allocation's, as the tracepoint gives it */
	__u8 pad;
};

/*
 * Page allocations kleakd counts but does not record (slots of the per-CPU
 * `page_counts` array, in pages): the page family tracks only pages that are
 * the kernel's own and nobody else's account.
 */
enum kleak_page_count {
	KLEAK_PAGES_TRACKED = 0,  /* recorded: unmovable or reclaimable, with a site */
	KLEAK_PAGES_MOVABLE = 1,  /* MIGRATE_MOVABLE: process memory, page cache, tmpfs */
	KLEAK_PAGES_SLAB = 2,     /* a slab's own pages: the slab family has its objects */
	KLEAK_PAGES_VMALLOC = 3,  /* backing a vmalloc area: the vmalloc family has it */
	KLEAK_PAGES_PERCPU = 4,   /* backing a percpu chunk: the percpu family has it */
	KLEAK_PAGES_NO_SITE = 5,  /* the stack did not show the page allocator */
	KLEAK_PAGES_FREED = 6,    /* pages of every page free record (tracked or not) */
};
#define KLEAK_PAGE_COUNTS 8

/*
 * One CPU's slot in the `pending` array (one slot per possible CPU), which
 * the daemon maps read-only: a drain runs kleak__flush, an IPI, only on the
 * CPUs whose batch holds records, so idle CPUs are left asleep. Only its own
 * CPU writes a slot; each fills a cache line so that no two CPUs' writes
 * bounce a line between them. It never reaches a ring or a recording, so a
 * change to it does not bump KLEAK_ABI_VERSION: the daemon carries its BPF
 * object, and both are built from this header.
 */
#define KLEAK_CACHE_LINE_BYTES 64
struct kleak_pending_slot {
	__u32 pending; /* 1: the batch may hold records; 0: it is empty */
	__u8 pad[KLEAK_CACHE_LINE_BYTES - 4];
};

/*
 * Kernel stacks of allocations (README, "Stacks"). The mode and the set of
 * wanted sites change at run time: the mode lives in the one-entry
 * `stack_settings` array, the sites in the `stack_sites` hash. A site's bit
 * in site_bits (bit (call_site * 2^64/phi) >> 52) says it may be wanted: a
 * program checks the bit first, so an allocation at an unwanted site costs
 * one array lookup and a bit test, never a hash lookup. Only allocation
 * records (slab, percpu, vmalloc) carry a stack; page records have no room.
 * Not in any ring, so changes to these do not bump KLEAK_ABI_VERSION.
 */
enum kleak_stack_mode {
	KLEAK_STACKS_OFF = 0,
	KLEAK_STACKS_SUSPECTS = 1, /* only at the sites in `stack_sites` */
	KLEAK_STACKS_ALL = 2,      /* every allocation (1 in 2^sample_shift pointers) */
};
#define KLEAK_STACK_DEPTH 64        /* frames kept per stack */
#define KLEAK_STACK_ENTRIES 8192    /* buckets of the `stacks` map (4 MiB) */
#define KLEAK_STACK_SITES_MAX 4096  /* entries of the `stack_sites` hash */
#define KLEAK_STACK_SITE_BITS 4096
struct kleak_stack_settings {
	__u32 mode;         /* enum kleak_stack_mode */
	__u32 sample_shift; /* KLEAK_STACKS_ALL: keep 1 in 2^n pointers' stacks */
	__u64 site_bits[KLEAK_STACK_SITE_BITS / 64];
};

/*
 * Per-CPU counters of stack captures (`stack_counts`), at index
 * family * KLEAK_STACK_COUNT_KINDS + kind: nothing is lost silently.
 */
enum kleak_stack_count {
	KLEAK_STACKS_CAPTURED = 0,  /* a stack id went into the record */
	KLEAK_STACKS_COLLIDED = 1,  /* its bucket held another stack (-EEXIST): the map is full */
	KLEAK_STACKS_FAILED = 2,    /* any other error: the record carries no stack */
};
#define KLEAK_STACK_COUNT_KINDS 4
#define KLEAK_STACK_COUNTS (KLEAK_FAMILY_COUNT * KLEAK_STACK_COUNT_KINDS)

/*
 * Who allocated, recorded at the allocation (README, "Processes and
 * cgroups"). An allocation record that carries a stack carries its tgid; the
 * process's comm (its thread group leader's, as /proc/PID/comm) and cgroup v2
 * id go into a KLEAK_PROCESS record just before it, in the same CPU's stream,
 * only when the `processes` LRU hash (tgid -> struct kleak_process_seen) does
 * not already hold them: once per process and cgroup move, not per event. So
 * a process that exited, or a cgroup removed, is still named at the query.
 */
#define KLEAK_COMM_BYTES 16
struct kleak_process_seen {
	__u64 cgroup_id; /* bpf_get_current_cgroup_id(): the cgroup v2 directory's inode */
	char comm[KLEAK_COMM_BYTES]; /* NUL-padded */
};
#define KLEAK_PROCESSES_MAX 8192 /* entries of the `processes` LRU hash (~0.5 MiB) */

/* KLEAK_PROCESS: 40 bytes; hdr.tgid is the process. */
struct kleak_process_record {
	struct kleak_record_header hdr;
	__u64 cgroup_id;
	char comm[KLEAK_COMM_BYTES];
};

#endif /* KLEAK_ABI_H */
