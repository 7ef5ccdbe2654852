/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * kleak_site.h - the call site of an allocation whose tracepoint carries
 * none (kmem:mm_page_alloc, vmalloc:alloc_vmap_area): the first frame of a
 * short kernel stack that lies outside the allocator. Plain C shared by the
 * BPF programs and the daemon's unit tests (tests/unit/test_site_pick.cpp),
 * so the logic the kernel runs is the logic the tests check.
 *
 * User space resolves, once at start (kernel/allocator_text.h), where the
 * allocators' functions lie in kernel text: a sorted table of ranges, each
 * with a role. The table goes to the BPF object's rodata before load.
 */
#ifndef KLEAK_SITE_H
#define KLEAK_SITE_H

#ifndef __BPF__
#include <linux/types.h>
#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif
#endif

/*
 * Hides a value from the compiler, which would otherwise turn some of the
 * arithmetic below back into comparisons and branches (a 0-or-1 value ANDed
 * with a mask becomes a select, and BPF has no conditional move).
 */
#define KLEAK_OPAQUE(x) asm volatile("" : "+r"(x))

/* Frames read per allocation: enough for tracing's own frames (2-3), the page
 * allocator's (up to 5) and a slab's refill path (up to 6) before the caller. */
#define KLEAK_SITE_FRAMES 16

/* Ranges in the table: a power of two, unused slots start at ~0. */
#define KLEAK_TEXT_RANGES 128
#define KLEAK_TEXT_SEARCH_STEPS 7 /* log2(KLEAK_TEXT_RANGES) */

enum kleak_text_role {
	KLEAK_ROLE_NONE = 0,       /* any other code: a call site */
	KLEAK_ROLE_PAGE_ALLOC = 1, /* the page allocator and its wrappers */
	KLEAK_ROLE_VMALLOC = 2,    /* vmalloc and its wrappers (kvmalloc too) */
	KLEAK_ROLE_SLAB = 3,       /* slab allocation, refill and kmalloc_large */
	KLEAK_ROLE_PERCPU = 4,     /* the percpu allocator's chunk management */
};

struct kleak_text_range {
	__u64 start; /* sorted ascending; ranges do not overlap */
	__u32 size;
	__u32 role;  /* enum kleak_text_role */
};

/*
 * Everything below is arithmetic, without a branch: the verifier walks every
 * path through a program, and a branch per search step and per frame would
 * give it 2^7 paths per frame, times the frames, times whatever follows (the
 * page program's batch code): past its limit. Arithmetic leaves one path.
 *
 * 1 when a < b, for values within 2^63 of each other (kernel text addresses
 * and the sizes and offsets between them); 0 otherwise.
 */
static __always_inline __u64 kleak_lt(__u64 a, __u64 b)
{
	return (a - b) >> 63;
}

/* 1 when a == b, else 0 (for 32-bit values). */
static __always_inline __u64 kleak_eq32(__u32 a, __u32 b)
{
	return ((__u64)(a ^ b) - 1) >> 63;
}

/*
 * The role of the code at `addr`: a binary search for the last range
 * starting at or before it, in a fixed number of steps. An unused slot
 * (start ~0) is above any kernel address.
 */
static __always_inline __u32 kleak_text_role(const volatile struct kleak_text_range *ranges, __u64 addr)
{
	__u64 pos = 0, step = KLEAK_TEXT_RANGES / 2, inside;

#ifdef __BPF__
#pragma unroll
#endif
	for (int i = 0; i < KLEAK_TEXT_SEARCH_STEPS; i++) {
		/* below == 0: that range starts at or before addr, so go right */
		__u64 probe = pos + step, below;

		/*
		 * The mask must reach the verifier: clang knows probe < 128 and
		 * would drop it, and 6.1's verifier loses the bounds of the ORs
		 * clang makes of these sums ("math between map_value pointer and
		 * register with unbounded min value").
		 */
		KLEAK_OPAQUE(probe);
		probe &= KLEAK_TEXT_RANGES - 1;
		below = kleak_lt(addr, ranges[probe].start);

		KLEAK_OPAQUE(below);
		pos += step & (below - 1);
		step /= 2;
	}
	KLEAK_OPAQUE(pos);
	pos &= KLEAK_TEXT_RANGES - 1;
	/* inside: start <= addr < start + size */
	inside = (1 - kleak_lt(addr, ranges[pos].start)) & kleak_lt(addr - ranges[pos].start, ranges[pos].size);
	KLEAK_OPAQUE(inside);
	return ranges[pos].role & (__u32)(0 - inside);
}

/*
 * Picks the call site from `frames` (innermost first; KLEAK_SITE_FRAMES
 * slots, those past the stack's end zero): skips tracing's own frames up to
 * the first one in the allocator (`allocator`, the role of the code that
 * fires the tracepoint), then the allocator's frames; the next frame is the
 * site. *owner says whose code it is: another allocator's (a slab refilling
 * itself, vmalloc filling an area) or KLEAK_ROLE_NONE. Returns 0 (owner
 * NONE) when the stack never entered the allocator or ended in it (a zero
 * slot is no code's: it is picked, and is 0).
 */
static __always_inline __u64 kleak_pick_site(const __u64 *frames, const volatile struct kleak_text_range *ranges,
					     __u32 allocator, __u32 *owner)
{
	__u64 seen = 0, done = 0, site = 0, role_found = 0;

	for (__u32 i = 0; i < KLEAK_SITE_FRAMES; i++) {
		__u32 role = kleak_text_role(ranges, frames[i]);
		__u64 in_allocator = kleak_eq32(role, allocator);
		__u64 pick;

		KLEAK_OPAQUE(in_allocator);
		pick = seen & (1 - in_allocator) & (1 - done);
		KLEAK_OPAQUE(pick);

		site |= frames[i] & (0 - pick);
		role_found |= (__u64)role & (0 - pick);
		done |= pick;
		seen |= in_allocator;
	}
	*owner = (__u32)role_found;
	return site;
}

#endif /* KLEAK_SITE_H */
