// What the verifier said when the kernel refused one of kleakd's programs, so
// that the start-up error can quote the kernel instead of guessing at
// privileges.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

struct bpf_object;
struct bpf_program;

namespace kleak {

// The verifier's own words at the end of `log`: its last one or two lines
// that are neither instructions ("12: (79) r1 = ..."), source comments
// ("; ..."), register states, nor statistics ("processed 5 insns ..."),
// joined by "; ". Empty when the log has none. Pure text handling.
std::string verifier_key_lines(std::string_view log);

struct ProgramRefusal {
    std::string program;  // "kleak__kmalloc"
    std::string log;      // the verifier's whole log
};

// Gives every program of `object` that will be loaded a log buffer of its
// own. libbpf loads without a log and, when the kernel refuses a program,
// loads it again with one into that buffer: only a refused program's buffer
// is written.
class VerifierLogs {
public:
    explicit VerifierLogs(::bpf_object& object);
    VerifierLogs(const VerifierLogs&) = delete;
    VerifierLogs& operator=(const VerifierLogs&) = delete;

    // After a failed load: the program the verifier refused, if any.
    std::optional<ProgramRefusal> refused_program() const;

private:
    std::vector<std::pair<const ::bpf_program*, std::unique_ptr<char[]>>> buffers_;
};

// "the running kernel (Linux R) refused BPF program P (MODE): ...; what to do".
std::string describe_refusal(const ProgramRefusal& refusal, std::string_view mode, std::string_view kernel_release);

}  // namespace kleak
