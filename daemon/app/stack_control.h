// The daemon's kernel-stack capture (README, "Stacks"): the mode and named
// functions in force, the call sites they give (core/stack_capture.h) pushed
// into the BPF maps, and the frames read back for queries. The capture starts
// as the config says (tracing.stacks); `capture` requests change it until
// the next restart.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/site_verdicts.h"
#include "core/stack_capture.h"
#include "core/stacks_query.h"
#include "core/symbolizer.h"
#include "core/tracker.h"
#include "kernel/bpf_tracer.h"

namespace kleak {

// Frames from the tracer's stack map, each stack read once per query.
class TracerStackSource final : public core::StackSource {
public:
    explicit TracerStackSource(const BpfTracer& tracer) : tracer_(tracer) {}
    std::vector<std::uint64_t> frames(std::uint32_t stack_id) override;

private:
    const BpfTracer& tracer_;
    std::unordered_map<std::uint32_t, std::vector<std::uint64_t>> read_;
};

class StackControl {
public:
    // As the tracer started (TracerOptions::stacks, stack_sample_shift).
    StackControl(BpfTracer& tracer, core::StackMode mode, std::uint32_t sample_shift = 0)
        : tracer_(tracer), sample_shift_(sample_shift) {
        capture_.mode = mode;
    }

    // A new capture; returns what failed, or nullopt.
    std::optional<std::string> set(core::StackCapture capture, std::uint32_t sample_shift, const core::Tracker& tracker,
                                   const core::SiteVerdicts& verdicts, core::Symbolizer& symbolizer);
    // After each verdict sample: the growing sites (and a named function's
    // new sites) follow. Only in suspects mode; nothing to write when the
    // sites did not change.
    std::optional<std::string> refresh(const core::Tracker& tracker, const core::SiteVerdicts& verdicts,
                                       core::Symbolizer& symbolizer);

    const core::StackCapture& capture() const { return capture_; }
    // {"mode", "functions", "sample_shift", "sites", "families": {family:
    // {"captured", "collided", "failed"}}}: what `stats` and `capture` show.
    nlohmann::json to_json() const;
    // Adds "capture" (to_json()) and "sample_shift" to a `stacks` result:
    // N > 0 while `all` mode samples, so its stacks' totals count 1 in 2^N
    // allocations (labelled, not scaled: stacks captured at suspect sites
    // before or since count every allocation).
    void label(nlohmann::json& stacks_result) const;

private:
    std::optional<std::string> apply(const core::Tracker& tracker, const core::SiteVerdicts& verdicts,
                                     core::Symbolizer& symbolizer, bool always);

    BpfTracer& tracer_;
    core::StackCapture capture_;
    std::uint32_t sample_shift_ = 0;
    std::vector<std::uint64_t> sites_;  // in the BPF map now
};

}  // namespace kleak
