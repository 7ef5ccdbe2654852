// How the traced programs attach: as tp_btf (BTF-typed raw tracepoints) or
// as plain raw_tp. Both run through the same kernel path per event; raw_tp
// loads on kernels whose verifier refuses a tp_btf program reading a `void *`
// argument (Debian 12's 6.1 and 6.12). `automatic` probes for that at start.
#pragma once

#include <optional>
#include <string>
#include <string_view>

struct btf;

namespace kleak {

enum class AttachMode { automatic, tp_btf, raw_tp };

// "auto", "tp_btf", "raw_tp"; nullopt for anything else.
std::optional<AttachMode> parse_attach_mode(std::string_view text);
const char* attach_mode_name(AttachMode mode);

// The mode a tracer uses, and why (for the start-up log line and stats).
struct AttachChoice {
    AttachMode mode = AttachMode::tp_btf;
    std::string reason;
};

// Resolves `requested`: tp_btf and raw_tp stand as asked; automatic loads a
// three-instruction tp_btf program on kfree that reads its `const void *ptr`
// argument, and takes tp_btf if the kernel accepts it, raw_tp otherwise.
AttachChoice choose_attach_mode(AttachMode requested, const ::btf* vmlinux);

}  // namespace kleak
