#include "kernel/verifier_log.h"

#include <bpf/libbpf.h>

#include <array>
#include <cctype>
#include <vector>

namespace kleak {

namespace {

bool starts_with_any(std::string_view line, std::initializer_list<std::string_view> prefixes) {
    for (const std::string_view p : prefixes)
        if (line.starts_with(p)) return true;
    return false;
}

// An instruction ("12: (79) ...", "12: R1=ctx()"), a register state line
// ("R1=ctx() R10=fp0"), or one of the closing statistics.
bool is_trace_line(std::string_view line) {
    std::size_t digits = 0;
    while (digits < line.size() && std::isdigit(static_cast<unsigned char>(line[digits]))) ++digits;
    if (digits > 0 && digits < line.size() && line[digits] == ':') return true;
    if (line.size() > 2 && line[0] == 'R' && std::isdigit(static_cast<unsigned char>(line[1]))) {
        const auto eq = line.find('=');
        const auto space = line.find(' ');
        if (eq != std::string_view::npos && (space == std::string_view::npos || eq < space)) return true;
    }
    return starts_with_any(line, {";", "processed ", "verification time", "stack depth", "max_states_per_insn",
                                  "from ", "mark_precise", "last_idx", "parent ", "regs=", "propagating ",
                                  "Validating ", "Func#", "libbpf:", "-- "});
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
    return s;
}

}  // namespace

std::string verifier_key_lines(std::string_view log) {
    std::vector<std::string_view> lines;
    while (!log.empty()) {
        const auto end = log.find('\n');
        lines.push_back(trim(log.substr(0, end)));
        if (end == std::string_view::npos) break;
        log.remove_prefix(end + 1);
    }
    std::array<std::string_view, 2> kept{};
    std::size_t found = 0;
    for (auto it = lines.rbegin(); it != lines.rend() && found < kept.size(); ++it) {
        if (it->empty() || is_trace_line(*it)) {
            if (found > 0) break;  // only lines right next to each other
            continue;
        }
        kept[found++] = *it;
    }
    std::string text;
    for (std::size_t i = found; i-- > 0;) text += (text.empty() ? "" : "; ") + std::string(kept[i]);
    return text;
}

namespace {

// Refusals logged at the default level fit in far less; a longer log on an old
// kernel (which fails a load whose log overflows) still holds its start.
constexpr std::size_t kLogBytes = 1 << 20;

}  // namespace

VerifierLogs::VerifierLogs(::bpf_object& object) {
    ::bpf_program* program = nullptr;
    bpf_object__for_each_program(program, &object) {
        if (!bpf_program__autoload(program)) continue;
        // Not value-initialized: pages no refusal writes are never touched.
        auto buffer = std::unique_ptr<char[]>(new char[kLogBytes]);
        buffer[0] = '\0';
        if (bpf_program__set_log_buf(program, buffer.get(), kLogBytes) == 0)
            buffers_.emplace_back(program, std::move(buffer));
    }
}

std::optional<ProgramRefusal> VerifierLogs::refused_program() const {
    for (const auto& [program, buffer] : buffers_) {
        if (buffer[0] == '\0') continue;
        buffer[kLogBytes - 1] = '\0';
        return ProgramRefusal{bpf_program__name(program), buffer.get()};
    }
    return std::nullopt;
}

std::string describe_refusal(const ProgramRefusal& refusal, std::string_view mode, std::string_view kernel_release) {
    std::string text = "the running kernel (Linux " + std::string(kernel_release) + ") refused BPF program " +
                       refusal.program + " (" + std::string(mode) + ")";
    if (const std::string key = verifier_key_lines(refusal.log); !key.empty()) text += "; its verifier says: " + key;
    text += ". This is not a permissions problem: ";
    if (mode == "tp_btf")
        text += "try --attach raw_tp (config tracing.attach), or run a newer kernel";
    else
        text += "kleakd does not support this kernel yet; please report it with the output of --log-level debug, "
                "or run a newer kernel";
    return text;
}

}  // namespace kleak
