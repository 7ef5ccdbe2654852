#include "app/scan_threads.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <exception>
#include <optional>
#include <system_error>
#include <thread>
#include <vector>

namespace kleak {

namespace {

std::size_t usable_cpus() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (::sched_getaffinity(0, sizeof set, &set) != 0) return 1;
    return static_cast<std::size_t>(std::max(CPU_COUNT(&set), 1));
}

// The CPUs this process may run on but the calling thread's current one.
// A new thread is queued where the scheduler finds room; when every CPU is
// busy (the traced load on one, the loop thread on the other) that can be
// the loop thread's own CPU, and the part then waits for the loop thread's
// part: the scan took as long on two threads as on one (bench_core with a
// loader running). Kept off the caller's CPU, it preempts the traced load
// instead, at the loop's priority.
std::optional<cpu_set_t> other_cpus() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (::sched_getaffinity(0, sizeof set, &set) != 0) return std::nullopt;
    const int self = ::sched_getcpu();
    if (self < 0 || self >= CPU_SETSIZE) return std::nullopt;
    CPU_CLR(self, &set);
    if (CPU_COUNT(&set) == 0) return std::nullopt;
    return set;
}

}  // namespace

ScanThreads::ScanThreads(std::size_t width)
    : width_(std::clamp<std::size_t>(width != 0 ? width : usable_cpus(), 1, kMaxWidth)) {}

void ScanThreads::run(std::size_t parts, const std::function<void(std::size_t)>& part) const {
    std::vector<std::exception_ptr> errors(parts);
    const auto guarded = [&](std::size_t i) {
        try {
            part(i);
        } catch (...) {
            errors[i] = std::current_exception();
        }
    };
    std::vector<std::jthread> threads;
    std::vector<std::size_t> not_started;
    const std::optional<cpu_set_t> elsewhere = parts > 1 ? other_cpus() : std::nullopt;
    for (std::size_t i = 1; i < parts; ++i) {
        try {
            threads.emplace_back(guarded, i);
        } catch (const std::system_error&) {
            not_started.push_back(i);
            continue;
        }
        // Best effort: where it fails, the thread runs wherever it was queued.
        if (elsewhere) ::pthread_setaffinity_np(threads.back().native_handle(), sizeof *elsewhere, &*elsewhere);
    }
    guarded(0);
    for (const std::size_t i : not_started) guarded(i);
    threads.clear();  // joins
    for (const std::exception_ptr& error : errors)
        if (error) std::rethrow_exception(error);
}

}  // namespace kleak
