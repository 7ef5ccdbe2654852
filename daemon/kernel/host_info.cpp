#include "kernel/host_info.h"

#include "core/cpu_list.h"

#include <bpf/libbpf.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace kleak {

std::string kernel_release() {
    utsname u{};
    return ::uname(&u) == 0 ? u.release : "";
}

std::string boot_id() {
    std::ifstream in("/proc/sys/kernel/random/boot_id");
    std::string id;
    std::getline(in, id);
    return id;
}

std::string host_name() {
    char buf[256] = {};
    return ::gethostname(buf, sizeof buf - 1) == 0 ? buf : "";
}

std::uint64_t monotonic_now_ns() {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(ts.tv_nsec);
}

unsigned possible_cpus() {
    const int n = libbpf_num_possible_cpus();
    return n > 0 ? static_cast<unsigned>(n) : 1;
}

std::optional<std::vector<unsigned>> online_cpus() {
    std::ifstream in("/sys/devices/system/cpu/online");
    std::string text;
    if (!std::getline(in, text)) return std::nullopt;
    return core::parse_cpu_list(text);
}

std::optional<std::string> read_slabinfo(std::string& error) {
    std::ifstream in("/proc/slabinfo");
    if (!in) {
        error = std::string("cannot read /proc/slabinfo: ") + std::strerror(errno);
        return std::nullopt;
    }
    std::ostringstream text;
    text << in.rdbuf();
    return std::move(text).str();
}

}  // namespace kleak

namespace kleak {

core::KernelMemoryCounters read_kernel_memory_counters() {
    core::KernelMemoryCounters out;
    std::ifstream meminfo("/proc/meminfo");
    core::parse_meminfo(meminfo, out);
    std::ifstream vmstat("/proc/vmstat");
    core::parse_vmstat(vmstat, out);
    return out;
}

}  // namespace kleak
