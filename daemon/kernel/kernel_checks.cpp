#include "kernel/kernel_checks.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/capability.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "kernel/host_info.h"
#include "kernel/startup_error.h"
#include "kernel/unique_fd.h"

namespace kleak {

namespace {

bool has_bpf_privileges() {
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3]{};
    if (::syscall(SYS_capget, &header, data) != 0) return true;  // let the load itself report
    auto has = [&data](int cap) { return (data[cap / 32].effective & (1u << (cap % 32))) != 0; };
    const int cap_perfmon = 38;
    const int cap_bpf = 39;
    return has(CAP_SYS_ADMIN) || (has(cap_bpf) && has(cap_perfmon));
}

[[noreturn]] void missing(const std::string& what, const char* since) {
    throw StartupError("this kernel (Linux " + kernel_release() + ") lacks " + what + ", which kleakd needs: run " +
                       since + " or later");
}

}  // namespace

bool locked_down_for_confidentiality() {
    std::ifstream in("/sys/kernel/security/lockdown");
    std::string modes;
    std::getline(in, modes);
    return modes.find("[confidentiality]") != std::string::npos;
}

void check_btf_present() {
    if (::access(kVmlinuxBtf, R_OK) != 0) {
        throw StartupError(std::string("this kernel has no BTF (") + kVmlinuxBtf + " " +
                           (errno == ENOENT ? "is missing" : std::strerror(errno)) +
                           "): kleakd needs a kernel built with CONFIG_DEBUG_INFO_BTF=y");
    }
}

void check_privileges() {
    if (has_bpf_privileges()) return;
    throw StartupError(
        "kleakd needs root, or the capabilities CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN before "
        "Linux 5.8), to load BPF programs: run it with sudo");
}

void check_kernel_features() {
    // Not libbpf_probe_bpf_map_type(): it says "unsupported" for any failure,
    // a security module's EPERM or ENOMEM too. EINVAL is the kernel not
    // knowing the map type.
    const UniqueFd ring(bpf_map_create(BPF_MAP_TYPE_RINGBUF, "kleak_probe", 0, 0, 4096, nullptr));
    if (ring.get() >= 0) return;
    if (errno == EINVAL) missing("BPF ring buffers (BPF_MAP_TYPE_RINGBUF)", "Linux 5.8");
    throw StartupError(describe_errno("creating a BPF ring buffer failed", -errno));
}

void check_rings_nest(int ring_fd) {
    LIBBPF_OPTS(bpf_map_create_opts, opts, .inner_map_fd = static_cast<__u32>(ring_fd));
    const UniqueFd outer(bpf_map_create(BPF_MAP_TYPE_ARRAY_OF_MAPS, "kleak_probe", 4, 4, 1, &opts));
    if (outer.get() >= 0) return;
    constexpr int kKernelEnotsupp = 524;  // ENOTSUPP: the kernel's own, not in libc's errno.h
    if (errno == EINVAL || errno == kKernelEnotsupp || errno == EOPNOTSUPP)
        missing("ring buffers inside an array of maps (one ring per CPU)", "Linux 5.10");
    throw StartupError(describe_errno("creating the array of per-CPU rings failed", -errno));
}

std::string describe_load_failure(int negative_errno) {
    const int err = negative_errno < 0 ? -negative_errno : negative_errno;
    std::string text = std::string("loading the BPF programs failed: ") + std::strerror(err);
    if (err == EPERM || err == EACCES) {
        if (!has_bpf_privileges())
            text += " (kleakd needs root, or CAP_BPF and CAP_PERFMON; run it with sudo)";
        else if (locked_down_for_confidentiality())
            text += " although kleakd has CAP_BPF and CAP_PERFMON: the kernel is locked down for confidentiality "
                    "(/sys/kernel/security/lockdown), which forbids BPF programs to read kernel memory";
        else
            text += " although kleakd has CAP_BPF and CAP_PERFMON: a security module (SELinux, AppArmor, a BPF "
                    "LSM) or kernel lockdown refused it";
    } else if (err == ENOMEM || err == E2BIG) {
        text += " (try a smaller --buffer-size)";
    }
    return text + "; rerun with --log-level debug to see libbpf's messages";
}

}  // namespace kleak
