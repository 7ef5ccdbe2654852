#include "app/scan_threads.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <exception>
#include <latch>
#include <optional>
#include <thread>
#include <vector>

namespace kleak {

namespace {

cpu_set_t allowed_cpus() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (::sched_getaffinity(0, sizeof set, &set) != 0) CPU_SET(0, &set);
    return set;
}

// The CPUs the calling thread may run on but its current one. A new thread
// is queued where the scheduler finds room; when every CPU is busy (the
// traced load on one, the loop thread on the other) that can be the loop
// thread's own CPU, and the part then waits for the loop thread's part: the
// scan took as long on two threads as on one (bench_core with a loader
// running). Kept off the caller's CPU, it preempts the traced load instead,
// at the loop's priority.
std::optional<cpu_set_t> other_cpus() {
    cpu_set_t set = allowed_cpus();
    const int self = ::sched_getcpu();
    if (self < 0 || self >= CPU_SETSIZE) return std::nullopt;
    CPU_CLR(self, &set);
    if (CPU_COUNT(&set) == 0) return std::nullopt;
    return set;
}

}  // namespace

ScanThreads::ScanThreads(std::size_t width) {
    const cpu_set_t cpus = allowed_cpus();
    width_ = std::clamp<std::size_t>(width != 0 ? width : static_cast<std::size_t>(CPU_COUNT(&cpus)), 1, kMaxWidth);
}

void ScanThreads::run(std::size_t parts, const std::function<void(std::size_t)>& part) const {
    if (parts == 0) return;
    // Everything that allocates comes before the first thread starts: once
    // one waits for `go`, nothing may throw until it is released.
    std::vector<std::exception_ptr> errors(parts);
    std::vector<char> run_here(parts, 0);  // parts whose thread could not be started
    std::vector<std::jthread> threads;
    threads.reserve(parts - 1);
    const auto guarded = [&](std::size_t i) {
        try {
            part(i);
        } catch (...) {
            errors[i] = std::current_exception();
        }
    };
    // The threads wait for `go` until their CPUs are set: a thread that had
    // already finished would have no kernel thread id left, and
    // pthread_setaffinity_np would then set the caller's CPUs instead.
    std::latch go(1);
    for (std::size_t i = 1; i < parts; ++i) {
        try {
            threads.emplace_back([&, i] {
                go.wait();
                guarded(i);
            });
        } catch (...) {  // EAGAIN, or no memory for the thread's state
            run_here[i] = 1;
        }
    }
    if (const std::optional<cpu_set_t> elsewhere = threads.empty() ? std::nullopt : other_cpus()) {
        // Best effort: where it fails, the thread runs wherever it was queued.
        for (std::jthread& t : threads) ::pthread_setaffinity_np(t.native_handle(), sizeof *elsewhere, &*elsewhere);
    }
    go.count_down();
    guarded(0);
    for (std::size_t i = 1; i < parts; ++i)
        if (run_here[i]) guarded(i);
    threads.clear();  // joins
    for (const std::exception_ptr& error : errors)
        if (error) std::rethrow_exception(error);
}

}  // namespace kleak
