#include "app/stack_control.h"

#include <algorithm>

#include "core/family.h"

namespace kleak {

std::vector<std::uint64_t> TracerStackSource::frames(std::uint32_t stack_id) {
    auto it = read_.find(stack_id);
    if (it == read_.end()) it = read_.emplace(stack_id, tracer_.stack_frames(stack_id)).first;
    return it->second;
}

std::optional<std::string> StackControl::set(core::StackCapture capture, std::uint32_t sample_shift,
                                             const core::Tracker& tracker, const core::SiteVerdicts& verdicts,
                                             core::Symbolizer& symbolizer) {
    capture_ = std::move(capture);
    sample_shift_ = sample_shift;
    return apply(tracker, verdicts, symbolizer, true);
}

std::optional<std::string> StackControl::refresh(const core::Tracker& tracker, const core::SiteVerdicts& verdicts,
                                                 core::Symbolizer& symbolizer) {
    if (capture_.mode != core::StackMode::suspects) return std::nullopt;
    return apply(tracker, verdicts, symbolizer, false);
}

std::optional<std::string> StackControl::apply(const core::Tracker& tracker, const core::SiteVerdicts& verdicts,
                                               core::Symbolizer& symbolizer, bool always) {
    std::vector<std::uint64_t> sites;
    if (capture_.mode == core::StackMode::suspects)
        sites = core::capture_sites(tracker, verdicts, capture_.functions, symbolizer);
    std::sort(sites.begin(), sites.end());
    if (!always && sites == sites_) return std::nullopt;
    sites_ = std::move(sites);
    return tracer_.set_stack_capture(capture_.mode, sample_shift_, sites_);
}

void StackControl::label(nlohmann::json& stacks_result) const {
    stacks_result["capture"] = to_json();
    stacks_result["sample_shift"] = capture_.mode == core::StackMode::all ? sample_shift_ : 0;
}

nlohmann::json StackControl::to_json() const {
    nlohmann::json families = nlohmann::json::object();
    const std::vector<StackCounts> counts = tracer_.read_stack_counts();
    for (std::size_t f = 0; f < counts.size() && f < core::kFamilies.size(); ++f) {
        if (core::kFamilies[f] == core::Family::page) continue;  // page records carry no stack
        families[std::string(core::family_name(core::kFamilies[f]))] = {
            {"captured", counts[f].captured}, {"collided", counts[f].collided}, {"failed", counts[f].failed}};
    }
    return {
        {"mode", core::stack_mode_name(capture_.mode)},
        {"functions", capture_.functions},
        {"sample_shift", sample_shift_},
        {"sites", sites_.size()},
        {"map_entries", KLEAK_STACK_ENTRIES},
        {"families", std::move(families)},
    };
}

}  // namespace kleak
