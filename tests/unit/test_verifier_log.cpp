// verifier_key_lines: the verifier's own words at the end of its log, as the
// start-up error quotes them when a kernel refuses a program.
#include "kernel/verifier_log.h"

#include <gtest/gtest.h>

namespace {

using kleak::verifier_key_lines;

// What Debian 12's 6.1.0-57 kernel logged for kleak__kmalloc as tp_btf.
constexpr const char* kVoidPointerRefusal =
    "reg type unsupported for arg#0 function kleak__kmalloc#37\n"
    "0: R1=ctx(off=0,imm=0) R10=fp0\n"
    "; int kleak__kmalloc(__u64 *ctx) { return on_kmalloc(ctx); }\n"
    "0: (79) r2 = *(u64 *)(r1 +8)\n"
    "func 'kmalloc' arg1 type UNKNOWN is not a struct\n"
    "invalid bpf_context access off=8 size=8\n"
    "processed 1 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0\n";

TEST(VerifierLog, QuotesTheLastTwoMessageLinesBeforeTheStatistics) {
    EXPECT_EQ(verifier_key_lines(kVoidPointerRefusal),
              "func 'kmalloc' arg1 type UNKNOWN is not a struct; invalid bpf_context access off=8 size=8");
}

TEST(VerifierLog, SkipsInstructionsRegisterStatesAndSourceLines) {
    const char* log =
        "0: R1=ctx() R10=fp0\n"
        "; const void *ptr = (const void *)ctx[1];\n"
        "1: (85) call bpf_probe_read_kernel#113\n"
        "unknown func bpf_probe_read_kernel#113\n"
        "verification time 12 usec\n"
        "stack depth 0\n"
        "processed 2 insns (limit 1000000)\n";
    EXPECT_EQ(verifier_key_lines(log), "unknown func bpf_probe_read_kernel#113");
}

TEST(VerifierLog, TakesOnlyLinesThatStandTogether) {
    // An early message, then instructions, then the refusal: only the refusal.
    const char* log =
        "Validating kleak__kfree() func#0...\n"
        "some early note\n"
        "3: (79) r1 = *(u64 *)(r1 +0)\n"
        "R1 invalid mem access 'scalar'\n";
    EXPECT_EQ(verifier_key_lines(log), "R1 invalid mem access 'scalar'");
}

TEST(VerifierLog, EmptyOrAllTraceGivesNothing) {
    EXPECT_EQ(verifier_key_lines(""), "");
    EXPECT_EQ(verifier_key_lines("0: (b7) r0 = 0\n1: (95) exit\nprocessed 2 insns\n"), "");
    EXPECT_EQ(verifier_key_lines("\n\n   \n"), "");
}

TEST(VerifierLog, KeepsALogWithoutATrailingNewline) {
    EXPECT_EQ(verifier_key_lines("invalid bpf_context access off=8 size=8"),
              "invalid bpf_context access off=8 size=8");
}

}  // namespace
