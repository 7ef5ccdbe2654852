// How the daemon (`kleakd serve`) uses the C heap.
//
// glibc raises its mmap threshold to the size of every large block freed
// (up to 32 MiB), so after the tracker's table doubles once, later large
// buffers (merge staging, the next table, snapshots) come from the brk heap,
// whose freed middle is never given back: measured at 1M outstanding, the
// daemon's anonymous memory was 46-53 MiB with glibc's default against 39 MiB
// with a fixed threshold. A fixed threshold keeps big buffers in their own
// mappings, which return to the kernel when freed.
#pragma once

namespace kleak {

// Fixes glibc's mmap threshold at 256 KiB (turning off its dynamic raise).
// For the daemon only: the commands that end (trace, record, report) gain
// nothing, and fresh mappings cost a page fault per page of every staging
// buffer they grow.
void return_freed_memory_promptly();

}  // namespace kleak
