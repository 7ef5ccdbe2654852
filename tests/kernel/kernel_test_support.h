// Shared helpers of the real-kernel tests (test_kernel, test_daemon): the
// REQUIRE_KERNEL gate, child processes with captured output, held pipes (the
// deterministic "leak" at alloc_pipe_info), report totals by function, and
// the BPF program census.
#pragma once

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#ifndef KLEAKD_BINARY
#error "KLEAKD_BINARY must name the kleakd binary under test"
#endif

// Without root and BTF these tests cannot run. That is a failure unless the
// caller explicitly allowed skipping, and it is never silent.
#define REQUIRE_KERNEL()                                                                                             \
    do {                                                                                                             \
        std::string kernel_test_why_;                                                                                \
        if (::geteuid() != 0)                                                                                        \
            kernel_test_why_ = "not running as root";                                                                \
        else if (!std::filesystem::exists("/sys/kernel/btf/vmlinux"))                                                \
            kernel_test_why_ = "kernel has no BTF";                                                                  \
        if (!kernel_test_why_.empty()) {                                                                             \
            std::cerr << "\n*** KERNEL TEST NOT RUN: " << kernel_test_why_ << " ***\n\n";                            \
            const char* allow = std::getenv("KLEAKD_ALLOW_KERNEL_SKIP");                                             \
            if (allow && std::string(allow) == "1") GTEST_SKIP() << "kernel test skipped: " << kernel_test_why_;     \
            FAIL() << "kernel test cannot run: " << kernel_test_why_ << " (set KLEAKD_ALLOW_KERNEL_SKIP=1 to skip)"; \
        }                                                                                                            \
    } while (0)

// A test that cannot run where it is (a host without CPU hotplug): said loudly.
#define SKIP_LOUDLY(why)                                                       \
    do {                                                                       \
        const std::string skip_why_ = (why);                                   \
        std::cerr << "\n*** KERNEL TEST NOT RUN: " << skip_why_ << " ***\n\n"; \
        GTEST_SKIP() << skip_why_;                                             \
    } while (0)

namespace kleak_test {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

inline constexpr int kPipes = 64;
inline constexpr uid_t kNobody = 65534;

inline fs::path make_temp_dir() {
    std::string pattern = (fs::temp_directory_path() / "kleakd-test-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    return pattern;
}

// A temporary directory removed with everything in it.
class TempDir {
public:
    TempDir() : path_(make_temp_dir()) {}
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const fs::path& path() const { return path_; }
    fs::path operator/(const fs::path& name) const { return path_ / name; }

private:
    fs::path path_;
};

inline std::string read_file(const fs::path& path) {
    std::ifstream in(path);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_file(const fs::path& path, const std::string& text) {
    std::ofstream out(path, std::ios::trunc);
    out << text;
}

struct Result {
    int exit_code = -1;
    std::string out;
    std::string err;
};

// Who a child runs as. Unset: the test's own credentials (root).
struct Identity {
    uid_t uid = 0;
    gid_t gid = 0;
    std::vector<gid_t> groups;  // supplementary groups, replacing root's
};

// A child process whose stdout and stderr go to files we read back.
class Process {
public:
    Process(std::string binary, std::vector<std::string> args, std::optional<Identity> identity = std::nullopt)
        : dir_(make_temp_dir()) {
        out_path_ = dir_ / "stdout";
        err_path_ = dir_ / "stderr";
        pid_ = ::fork();
        if (pid_ == 0) {
            const int out = ::open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
            const int err = ::open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
            ::dup2(out, 1);
            ::dup2(err, 2);
            if (identity) {
                if (::setgroups(identity->groups.size(), identity->groups.data()) != 0 ||
                    ::setgid(identity->gid) != 0 || ::setuid(identity->uid) != 0)
                    ::_exit(126);
            }
            std::vector<char*> argv;
            argv.push_back(binary.data());
            for (auto& a : args) argv.push_back(a.data());
            argv.push_back(nullptr);
            ::execv(binary.c_str(), argv.data());
            ::_exit(127);
        }
    }
    ~Process() {
        if (pid_ > 0 && !reaped_) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
        std::error_code ec;
        fs::remove_all(dir_, ec);
    }
    Process(const Process&) = delete;
    Process& operator=(const Process&) = delete;

    pid_t pid() const { return pid_; }
    bool running() {
        poll_exit();
        return !reaped_;
    }
    std::string stderr_text() const { return read_file(err_path_); }
    std::string stdout_text() const { return read_file(out_path_); }

    // Waits until stderr contains `text` (kleakd logs once attached).
    bool wait_for_stderr(const std::string& text, std::chrono::milliseconds timeout = 20s) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            if (stderr_text().find(text) != std::string::npos) return true;
            if (poll_exit()) return stderr_text().find(text) != std::string::npos;
            std::this_thread::sleep_for(20ms);
        }
        return false;
    }

    void signal(int sig) {
        if (!reaped_) ::kill(pid_, sig);
    }

    Result stop(int sig = SIGINT) {
        signal(sig);
        return wait();
    }

    // Waits at most `timeout`, then kills the child (exit code 128 + SIGKILL).
    Result wait_for(std::chrono::milliseconds timeout) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (!poll_exit() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(5ms);
        if (!reaped_) ::kill(pid_, SIGKILL);
        return wait();
    }

    Result wait() {
        if (!reaped_) {
            int status = 0;
            ::waitpid(pid_, &status, 0);
            record_exit(status);
        }
        return {exit_code_, stdout_text(), stderr_text()};
    }

private:
    bool poll_exit() {
        if (reaped_) return true;
        int status = 0;
        if (::waitpid(pid_, &status, WNOHANG) != pid_) return false;
        record_exit(status);
        return true;
    }
    void record_exit(int status) {
        reaped_ = true;
        exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }

    fs::path dir_, out_path_, err_path_;
    pid_t pid_ = -1;
    bool reaped_ = false;
    int exit_code_ = -1;
};

// kleakd as a child process.
class Kleakd : public Process {
public:
    explicit Kleakd(std::vector<std::string> args) : Process(KLEAKD_BINARY, std::move(args)) {}
    static fs::path make_temp_dir() { return kleak_test::make_temp_dir(); }
};

inline Result run_to_end(std::vector<std::string> args) { return Kleakd(std::move(args)).wait(); }

class HeldPipes {
public:
    explicit HeldPipes(int n) {
        for (int i = 0; i < n; ++i) {
            int fds[2];
            if (::pipe2(fds, O_CLOEXEC) == 0) fds_.insert(fds_.end(), {fds[0], fds[1]});
        }
    }
    ~HeldPipes() { close(); }
    HeldPipes(const HeldPipes&) = delete;
    HeldPipes& operator=(const HeldPipes&) = delete;
    void close() {
        for (int fd : fds_) ::close(fd);
        fds_.clear();
    }
    int count() const { return static_cast<int>(fds_.size() / 2); }

private:
    std::vector<int> fds_;
};

// Eventfds held open: each kmallocs its eventfd_ctx in do_eventfd, a site
// nothing else on a busy host churns (pipes are: every build opens and
// closes thousands, and their noise can keep a pipe leak's verdict steady).
class HeldEventfds {
public:
    void add() {
        const int fd = ::eventfd(0, EFD_CLOEXEC);
        if (fd >= 0) fds_.push_back(fd);
    }
    std::size_t count() const { return fds_.size(); }
    HeldEventfds() = default;
    HeldEventfds(const HeldEventfds&) = delete;
    HeldEventfds& operator=(const HeldEventfds&) = delete;
    ~HeldEventfds() {
        for (const int fd : fds_)
            if (fd >= 0) ::close(fd);
    }

private:
    std::vector<int> fds_;
};

struct FunctionTotals {
    std::uint64_t allocs = 0, frees = 0, outstanding = 0, outstanding_bytes = 0;
};

// A function can allocate at several call sites (alloc_pipe_info allocates
// the pipe_inode_info and its buffer array): sum them. Works on a report and
// on a `leaks` result alike (both have sites[] with these fields).
inline FunctionTotals by_function(const nlohmann::json& report, const std::string& function) {
    FunctionTotals t;
    for (const auto& site : report.at("sites")) {
        if (site.at("function") != function) continue;
        t.allocs += site.at("allocs").get<std::uint64_t>();
        t.frees += site.at("frees").get<std::uint64_t>();
        t.outstanding += site.at("outstanding").get<std::uint64_t>();
        t.outstanding_bytes += site.at("outstanding_bytes").get<std::uint64_t>();
    }
    return t;
}

// How a kleakd that logged `err` attached its programs ("tp_btf", "raw_tp"),
// from its line "programs attach as MODE: why"; "" when it has none.
inline std::string attach_mode_logged(const std::string& err) {
    const std::string marker = "programs attach as ";
    const auto at = err.find(marker);
    if (at == std::string::npos) return "";
    const auto start = at + marker.size();
    return err.substr(start, err.find(':', start) - start);
}

// CPUs online now (/sys/devices/system/cpu/online, "0-1,3"): fewer than the
// possible ones on a VM that may hot-add CPUs (the matrix guests have 4
// possible and 2 online).
inline std::set<unsigned> online_cpu_set() {
    std::string text;
    std::ifstream("/sys/devices/system/cpu/online") >> text;
    std::set<unsigned> cpus;
    std::stringstream items(text);
    for (std::string item; std::getline(items, item, ',');) {
        const std::size_t dash = item.find('-');
        const unsigned first = static_cast<unsigned>(std::stoul(item.substr(0, dash)));
        const unsigned last = dash == std::string::npos ? first : static_cast<unsigned>(std::stoul(item.substr(dash + 1)));
        for (unsigned cpu = first; cpu <= last; ++cpu) cpus.insert(cpu);
    }
    return cpus;
}

inline unsigned last_online_cpu() {
    const std::set<unsigned> online = online_cpu_set();
    return online.empty() ? 0 : *online.rbegin();
}

// --- CPU 1 offline and back (test_batching, test_daemon) -------------------------

// Pins the calling thread to one CPU for the scope.
class PinnedToCpu {
public:
    explicit PinnedToCpu(unsigned cpu) {
        ::sched_getaffinity(0, sizeof old_, &old_);
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        ok_ = ::sched_setaffinity(0, sizeof set, &set) == 0;
    }
    ~PinnedToCpu() { ::sched_setaffinity(0, sizeof old_, &old_); }
    bool ok() const { return ok_; }

private:
    cpu_set_t old_{};
    bool ok_ = false;
};

// CPU 1's hotplug switch: "0" takes it offline, "1" brings it back.
inline constexpr const char* kCpu1Online = "/sys/devices/system/cpu/cpu1/online";

// Writes "1" or "0" to kCpu1Online. Returns 0 or an errno.
inline int set_cpu1_online(bool online) {
    const int fd = ::open(kCpu1Online, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    const char value = online ? '1' : '0';
    const int err = ::write(fd, &value, 1) == 1 ? 0 : errno;
    ::close(fd);
    return err;
}

inline std::string read_cpu1_online() {
    std::string value;
    std::ifstream(kCpu1Online) >> value;
    return value;
}

// Skips, loudly, a test that takes CPU 1 offline where it cannot (a host
// without CPU hotplug, or CPU 1 offline already).
#define SKIP_UNLESS_CPU1_CAN_GO_OFFLINE()                                                                      \
    do {                                                                                                       \
        if (::access(kleak_test::kCpu1Online, W_OK) != 0)                                                      \
            SKIP_LOUDLY(std::string(kleak_test::kCpu1Online) + " is missing or not writable (" +              \
                        std::strerror(errno) + "): cannot take CPU 1 offline");                                \
        if (kleak_test::read_cpu1_online() != "1") SKIP_LOUDLY("CPU 1 is not online to begin with");           \
    } while (0)

// Takes CPU 1 offline for the scope; brings it back however the scope ends,
// a failed assertion included, and says so loudly if it cannot.
class Cpu1Offline {
public:
    Cpu1Offline() : error_(set_cpu1_online(false)) {}
    ~Cpu1Offline() {
        if (const int err = online_again(); err != 0)
            std::cerr << "\n*** CPU 1 IS STILL OFFLINE: writing 1 to " << kCpu1Online
                      << " failed: " << std::strerror(err) << " ***\n\n";
    }
    Cpu1Offline(const Cpu1Offline&) = delete;
    Cpu1Offline& operator=(const Cpu1Offline&) = delete;
    // 0 once CPU 1 is offline, or why writing 0 failed.
    int error() const { return error_; }
    // Brings CPU 1 back now (once); 0 or an errno.
    int online_again() {
        if (error_ != 0 || restored_) return 0;
        restored_ = true;
        return set_cpu1_online(true);
    }

private:
    int error_ = 0;
    bool restored_ = false;
};

// Drains run every 100 ms; give the records time to reach user space.
inline void let_drain() { std::this_thread::sleep_for(400ms); }

// kleakd's programs are kleak__* (tp_btf) or kleak_raw__* (raw_tp); the
// kernel keeps 15 characters of a name.
inline bool is_kleakd_program(const std::string& name) {
    return name.rfind("kleak__", 0) == 0 || name.rfind("kleak_raw__", 0) == 0;
}

// The loaded BPF programs that are kleakd's: id -> name.
inline std::map<__u32, std::string> kleakd_programs_by_id() {
    std::map<__u32, std::string> programs;
    __u32 id = 0;
    while (bpf_prog_get_next_id(id, &id) == 0) {
        const int fd = bpf_prog_get_fd_by_id(id);
        if (fd < 0) continue;
        bpf_prog_info info{};
        __u32 len = sizeof info;
        if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0 && is_kleakd_program(info.name))
            programs.emplace(id, info.name);
        ::close(fd);
    }
    return programs;
}

// The BPF programs process `pid` holds open (from /proc/PID/fdinfo): one
// kleakd's own programs, whatever other kleakd runs beside it.
inline std::set<__u32> programs_held_by(pid_t pid) {
    std::set<__u32> ids;
    std::error_code ec;
    const std::filesystem::path fdinfo = "/proc/" + std::to_string(pid) + "/fdinfo";
    for (std::filesystem::directory_iterator it(fdinfo, ec), end; !ec && it != end; it.increment(ec)) {
        std::ifstream in(it->path());
        std::string key;
        while (in >> key) {
            if (key != "prog_id:") continue;
            __u32 id = 0;
            if (in >> id) ids.insert(id);
        }
    }
    return ids;
}

// Names of the loaded BPF programs that are kleakd's, whichever kleakd loaded them.
inline std::vector<std::string> kleakd_programs_loaded() {
    std::vector<std::string> names;
    for (const auto& [id, name] : kleakd_programs_by_id()) names.push_back(name);
    return names;
}

}  // namespace kleak_test
