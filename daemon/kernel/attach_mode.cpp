#include "kernel/attach_mode.h"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <linux/bpf.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iterator>

namespace kleak {

std::optional<AttachMode> parse_attach_mode(std::string_view text) {
    if (text == "auto") return AttachMode::automatic;
    if (text == "tp_btf") return AttachMode::tp_btf;
    if (text == "raw_tp") return AttachMode::raw_tp;
    return std::nullopt;
}

const char* attach_mode_name(AttachMode mode) {
    switch (mode) {
        case AttachMode::automatic: return "auto";
        case AttachMode::tp_btf: return "tp_btf";
        case AttachMode::raw_tp: return "raw_tp";
    }
    return "?";
}

namespace {

// Loads `r0 = *(u64 *)(ctx + 8); r0 = 0; exit` as a tp_btf program on kfree:
// exactly the read of `ptr` that older verifiers refuse. 0 on success, else
// the errno of the refusal.
int probe_void_pointer_read(const ::btf* vmlinux) {
    const int type_id = btf__find_by_name_kind(vmlinux, "btf_trace_kfree", BTF_KIND_TYPEDEF);
    if (type_id < 0) return ENOENT;
    const bpf_insn program[] = {
        {.code = BPF_LDX | BPF_MEM | BPF_DW, .dst_reg = BPF_REG_0, .src_reg = BPF_REG_1, .off = 8, .imm = 0},
        {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .src_reg = 0, .off = 0, .imm = 0},
        {.code = BPF_JMP | BPF_EXIT, .dst_reg = 0, .src_reg = 0, .off = 0, .imm = 0},
    };
    LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = BPF_TRACE_RAW_TP,
                .attach_btf_id = static_cast<__u32>(type_id));
    const int fd = bpf_prog_load(BPF_PROG_TYPE_TRACING, "kleak_probe", "GPL", program, std::size(program), &opts);
    if (fd < 0) return errno;
    ::close(fd);
    return 0;
}

}  // namespace

AttachChoice choose_attach_mode(AttachMode requested, const ::btf* vmlinux) {
    if (requested == AttachMode::tp_btf) return {AttachMode::tp_btf, "as configured"};
    if (requested == AttachMode::raw_tp) return {AttachMode::raw_tp, "as configured"};
    const int refused = probe_void_pointer_read(vmlinux);
    if (refused == 0) return {AttachMode::tp_btf, "this kernel's verifier lets tp_btf programs read every argument"};
    return {AttachMode::raw_tp, std::string("this kernel's verifier refuses a tp_btf program that reads a void * "
                                            "argument (probe on kmem:kfree: ") +
                                    std::strerror(refused) + ")"};
}

}  // namespace kleak
