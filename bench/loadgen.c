// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * loadgen - a slab-allocation load generator for kleakd's benchmarks.
 *
 * Modes:
 *   writev  writev(/dev/null) of 16 one-byte iovecs: more than UIO_FASTIOV (8)
 *           vectors, so the kernel kmallocs the iovec array and kfrees it: one
 *           kmalloc + one kfree per iteration and little else.
 *   pipe    pipe2() + close() of both ends: alloc_pipe_info's kmallocs, the
 *           inode and file slab caches, and their frees (some via RCU).
 *   pipebuf writes 64 KiB into a pipe and reads it back: 16 pipe buffer pages
 *           allocated (alloc_page in anon_pipe_write) and freed per iteration,
 *           the page-heavy loop of the page-family benchmark.
 *   leak    opens N pipes (--count) and holds them until the duration ends or
 *           SIGINT/SIGTERM: a known number of outstanding allocations at
 *           alloc_pipe_info. Prints "holding N pipes" once they are open.
 *
 * Options: --threads N (default 1), --duration SECONDS (default 5; 0 with
 * leak: until a signal), --count N (leak, default 1000).
 * Prints one line:
 *   <mode> threads=<n> iterations=<total> seconds=<wall s> iter_per_s=<rate> cpu_s=<s> iter_per_cpu_s=<rate>
 * Each thread stops after --duration measured on CLOCK_MONOTONIC. iter_per_s
 * is the sum over threads divided by the wall time of the run. cpu_s is the
 * CPU time the loader threads themselves ran (CLOCK_THREAD_CPUTIME_ID: user,
 * system, and the BPF programs that run inside their system calls), so
 * iter_per_cpu_s is the rate the loader would reach with a CPU to itself: on a
 * machine shared with other work it is the steadier measure of what tracing
 * costs the traced code.
 *
 * Build: cc -O2 -pthread -o loadgen bench/loadgen.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

enum mode { MODE_WRITEV, MODE_PIPE, MODE_PIPEBUF, MODE_LEAK };

static enum mode mode = MODE_WRITEV;
static double duration_s = 5.0;
static int threads = 1;
static long leak_count = 1000;
static atomic_int stop_flag;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

struct worker {
	pthread_t thread;
	uint64_t iterations;
	uint64_t cpu_ns;
	int fd;
};

static uint64_t thread_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Checking the clock every iteration would cost as much as the syscall. */
#define BATCH 256

static void *run_writev(void *arg)
{
	struct worker *w = arg;
	const uint64_t deadline = now_ns() + (uint64_t)(duration_s * 1e9);
	const uint64_t cpu_start = thread_cpu_ns();
	struct iovec iov[16];
	char byte = 'x';

	for (int i = 0; i < 16; ++i) {
		iov[i].iov_base = &byte;
		iov[i].iov_len = 1;
	}
	while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
		for (int i = 0; i < BATCH; ++i) {
			if (writev(w->fd, iov, 16) != 16) {
				perror("writev");
				exit(1);
			}
		}
		w->iterations += BATCH;
		if (now_ns() >= deadline)
			break;
	}
	w->cpu_ns = thread_cpu_ns() - cpu_start;
	return NULL;
}

static void *run_pipe(void *arg)
{
	struct worker *w = arg;
	const uint64_t deadline = now_ns() + (uint64_t)(duration_s * 1e9);
	const uint64_t cpu_start = thread_cpu_ns();
	int fds[2];

	while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
		for (int i = 0; i < BATCH / 8; ++i) {
			if (pipe2(fds, O_CLOEXEC) != 0) {
				perror("pipe2");
				exit(1);
			}
			close(fds[0]);
			close(fds[1]);
		}
		w->iterations += BATCH / 8;
		if (now_ns() >= deadline)
			break;
	}
	w->cpu_ns = thread_cpu_ns() - cpu_start;
	return NULL;
}

/* 64 KiB: the default pipe capacity (16 buffers of one page), so one write
 * fills it without blocking and one read empties it. */
#define PIPEBUF_BYTES 65536

static void *run_pipebuf(void *arg)
{
	struct worker *w = arg;
	const uint64_t deadline = now_ns() + (uint64_t)(duration_s * 1e9);
	const uint64_t cpu_start = thread_cpu_ns();
	static __thread char buf[PIPEBUF_BYTES];
	int fds[2];

	if (pipe2(fds, O_CLOEXEC) != 0) {
		perror("pipe2");
		exit(1);
	}
	memset(buf, 'x', sizeof(buf));
	while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
		for (int i = 0; i < BATCH / 16; ++i) {
			if (write(fds[1], buf, sizeof(buf)) != (ssize_t)sizeof(buf) ||
			    read(fds[0], buf, sizeof(buf)) != (ssize_t)sizeof(buf)) {
				perror("pipebuf");
				exit(1);
			}
		}
		w->iterations += BATCH / 16;
		if (now_ns() >= deadline)
			break;
	}
	close(fds[0]);
	close(fds[1]);
	w->cpu_ns = thread_cpu_ns() - cpu_start;
	return NULL;
}

static void on_signal(int sig)
{
	(void)sig;
	atomic_store(&stop_flag, 1);
}

static int run_leak(void)
{
	struct rlimit rl;
	int *fds;
	long opened = 0;

	/* Two descriptors per pipe, plus stdio. */
	rl.rlim_cur = rl.rlim_max = (rlim_t)(leak_count * 2 + 64);
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
		fprintf(stderr, "loadgen: cannot raise RLIMIT_NOFILE: %s\n", strerror(errno));
	fds = calloc((size_t)leak_count * 2, sizeof(*fds));
	if (!fds)
		return 1;
	for (; opened < leak_count; ++opened) {
		if (pipe2(fds + 2 * opened, O_CLOEXEC) != 0) {
			fprintf(stderr, "loadgen: pipe2 #%ld: %s\n", opened, strerror(errno));
			break;
		}
	}
	printf("holding %ld pipes\n", opened);
	fflush(stdout);
	const uint64_t deadline = duration_s > 0 ? now_ns() + (uint64_t)(duration_s * 1e9) : UINT64_MAX;
	while (!atomic_load(&stop_flag) && now_ns() < deadline)
		usleep(10000);
	for (long i = 0; i < 2 * opened; ++i)
		close(fds[i]);
	free(fds);
	printf("leak threads=1 iterations=%ld seconds=0 iter_per_s=0 cpu_s=0 iter_per_cpu_s=0\n", opened);
	return opened == leak_count ? 0 : 1;
}

static void usage(const char *argv0)
{
	fprintf(stderr,
		"usage: %s writev|pipe|pipebuf|leak [--threads N] [--duration SECONDS] [--count N]\n"
		"  writev: writev(/dev/null, 16 one-byte iovecs): one kmalloc + one kfree each\n"
		"  pipe:   pipe2() + close(): alloc_pipe_info, inode and file caches\n"
		"  pipebuf: write 64 KiB into a pipe and read it back: 16 buffer pages each\n"
		"  leak:   hold --count pipes open until --duration ends (0: until SIGINT/SIGTERM)\n",
		argv0);
	exit(2);
}

int main(int argc, char **argv)
{
	struct sigaction sa;

	if (argc < 2)
		usage(argv[0]);
	if (!strcmp(argv[1], "writev"))
		mode = MODE_WRITEV;
	else if (!strcmp(argv[1], "pipe"))
		mode = MODE_PIPE;
	else if (!strcmp(argv[1], "pipebuf"))
		mode = MODE_PIPEBUF;
	else if (!strcmp(argv[1], "leak"))
		mode = MODE_LEAK;
	else
		usage(argv[0]);
	for (int i = 2; i < argc; ++i) {
		if (i + 1 >= argc)
			usage(argv[0]);
		if (!strcmp(argv[i], "--threads"))
			threads = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--duration"))
			duration_s = atof(argv[++i]);
		else if (!strcmp(argv[i], "--count"))
			leak_count = atol(argv[++i]);
		else
			usage(argv[0]);
	}
	if (threads < 1 || threads > 1024 || leak_count < 1 || duration_s < 0)
		usage(argv[0]);

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	if (mode == MODE_LEAK)
		return run_leak();

	struct worker *workers = calloc((size_t)threads, sizeof(*workers));
	const int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);

	if (!workers || devnull < 0) {
		perror("loadgen");
		return 1;
	}
	const uint64_t start = now_ns();
	for (int t = 0; t < threads; ++t) {
		workers[t].fd = devnull;
		if (pthread_create(&workers[t].thread, NULL, mode == MODE_WRITEV ? run_writev
				   : mode == MODE_PIPE ? run_pipe
						       : run_pipebuf,
				   &workers[t]) != 0) {
			perror("pthread_create");
			return 1;
		}
	}
	uint64_t total = 0, cpu_ns = 0;

	for (int t = 0; t < threads; ++t) {
		pthread_join(workers[t].thread, NULL);
		total += workers[t].iterations;
		cpu_ns += workers[t].cpu_ns;
	}
	const double seconds = (double)(now_ns() - start) / 1e9;
	const double cpu_s = (double)cpu_ns / 1e9;

	/* Per thread, iterations per CPU-second; times threads for the total. */
	printf("%s threads=%d iterations=%llu seconds=%.3f iter_per_s=%.0f cpu_s=%.3f iter_per_cpu_s=%.0f\n",
	       mode == MODE_WRITEV ? "writev" : mode == MODE_PIPE ? "pipe" : "pipebuf", threads, (unsigned long long)total, seconds, (double)total / seconds,
	       cpu_s, cpu_s > 0 ? (double)total / cpu_s * threads : 0.0);
	free(workers);
	return 0;
}
