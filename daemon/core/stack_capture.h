// Which allocations get a kernel stack (README, "Stacks"): a mode, and in
// `suspects` mode the call sites the daemon judges growing plus those in
// functions a user named. The BPF side checks a site bit, then a hash map of
// sites (kleak_abi.h); this file decides their contents. Pure.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kleak_abi.h"
#include "site_verdicts.h"
#include "symbolizer.h"
#include "tracker.h"

namespace kleak::core {

enum class StackMode : std::uint32_t {
    off = KLEAK_STACKS_OFF,
    suspects = KLEAK_STACKS_SUSPECTS,
    all = KLEAK_STACKS_ALL,
};
std::string_view stack_mode_name(StackMode mode);  // "off", "suspects", "all"
std::optional<StackMode> parse_stack_mode(std::string_view name);

// `all` mode's default sample: a stack for 1 in 2^N pointers (the config's
// tracing.stack_sample_shift, `kleakd trace --stack-sample-shift`, and a
// `capture` that names no shift). A stack walk costs ~2.5 us per allocation
// here; at 1 in 8 the pipe loop keeps 0.51 of its untraced CPU rate instead
// of 0.17 (bench/RESULTS.md, "Sampled stacks").
inline constexpr std::uint32_t kDefaultStackSampleShift = 3;

struct StackCapture {
    StackMode mode = StackMode::suspects;
    // suspects mode: the call sites in these functions are captured too.
    std::vector<std::string> functions;
    bool operator==(const StackCapture&) const = default;
};

// The call sites to capture in suspects mode: those whose function is in
// `functions` (a user asked for them), then the sites judged growing (most
// bytes per hour first), at most `limit`, without duplicates. Page sites are left out: their records
// have no room for a stack. A named function's sites are the ones the
// tracker has seen: a site new since the last call is added at the next.
std::vector<std::uint64_t> capture_sites(const Tracker& tracker, const SiteVerdicts& verdicts,
                                         std::span<const std::string> functions, Symbolizer& symbolizer,
                                         std::size_t limit = KLEAK_STACK_SITES_MAX);

inline constexpr std::size_t kSiteBitWords = KLEAK_STACK_SITE_BITS / 64;
using SiteBits = std::array<std::uint64_t, kSiteBitWords>;

// A site's bit in kleak_stack_settings.site_bits: the same hash the BPF
// program computes (kleak.bpf.c, stack_wanted).
constexpr std::uint32_t site_bit(std::uint64_t call_site) {
    return static_cast<std::uint32_t>((call_site * 0x9E3779B97F4A7C15ULL) >> (64 - 12));
}
static_assert(KLEAK_STACK_SITE_BITS == 1u << 12);
SiteBits site_bits(std::span<const std::uint64_t> sites);

}  // namespace kleak::core
